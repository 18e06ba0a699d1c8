"""Shared helpers of the app's pages: configuration, cached models, the image gallery and the current
image, and a few small widgets every page uses. All maths lives in :mod:`toast_core`.

Configuration (environment variables):

* ``TOAST_APP_MODELS`` — which models the pages show: ``demo`` (default: the trained demo checkpoints;
  random tiny models, labelled as such, until ``prepare-demo`` has run), ``tiny`` (random tiny models
  of every registered method, for tests) or a directory of checkpoints.
* ``TOAST_APP_ALLOW_PATHS`` — ``1`` / ``0`` to allow or refuse loading checkpoints by server path. By
  default paths are allowed only when the server listens on 127.0.0.1/localhost (serving beyond
  localhost disables them; uploads stay available, limited by ``server.maxUploadSize``).
* ``TOAST_DEVICE`` — force a device (default: CUDA when present, with bf16 autocast; else CPU).
* ``TOAST_APP_THREADS`` — torch CPU threads per inference (default 1 on CPU: sessions are served by
  parallel threads, and on a busy 2-core machine two intra-op threads per forward ran 10x slower than
  one because of oversubscription; ``0`` leaves torch's default).

Models are cached with ``st.cache_resource`` keyed by plain strings (``"tiny:toast"``,
``"ckpt:/path"``) and shared by every session; nothing here modifies them.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import streamlit as st
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import toast_core as tc  # noqa: E402
from toast_core import compare as cmp  # noqa: E402
from toast_core.errors import ToastError  # noqa: E402
from toast_core.maps import ATTENTION_KINDS, MAP_KINDS  # noqa: E402

ASSETS = ROOT / "assets"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
COLORMAPS = ["inferno", "viridis", "magma", "plasma", "turbo", "cividis", "gray", "jet"]
MAX_SESSION_UPLOADS = 4
#: widget keys starting with this prefix keep their value when the user switches pages
KEEP = "keep-"


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------

def models_mode() -> str:
    return os.environ.get("TOAST_APP_MODELS", "demo").strip() or "demo"


def paths_allowed() -> bool:
    """Loading checkpoints by server path: off when serving beyond localhost, unless forced on."""
    env = os.environ.get("TOAST_APP_ALLOW_PATHS")
    if env is not None and env.strip() != "":
        return env.strip().lower() in ("1", "true", "yes", "on")
    try:
        address = str(st.get_option("server.address") or "")
    except Exception:  # noqa: BLE001 - option missing outside a server
        address = ""
    return address in ("127.0.0.1", "localhost", "::1")


def device() -> str:
    return cmp.default_device()


def configure_torch_threads() -> None:
    """Apply ``TOAST_APP_THREADS`` once per process (see the module docstring)."""
    import torch

    if getattr(configure_torch_threads, "done", False):
        return
    configure_torch_threads.done = True
    raw = os.environ.get("TOAST_APP_THREADS", "").strip()
    n = int(raw) if raw.isdigit() else (1 if device() == "cpu" else 0)
    if n > 0:
        torch.set_num_threads(n)


def keep_widget_state() -> None:
    """Stop Streamlit from dropping page-shared widget values when the user switches pages (called
    by the entry script before the page runs; also applies the torch thread setting once)."""
    configure_torch_threads()
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith(KEEP):
            st.session_state[key] = st.session_state[key]


def slug(name: str) -> str:
    """A key/CSS-safe form of a display name: ``"toast (2)"`` -> ``"toast-2"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x"


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------

@st.cache_resource(show_spinner="Loading model…", max_entries=64)
def load_model(key: str, device_name: str) -> cmp.ModelEntry:
    """One model, shared by every session (keyed by the checkpoint path string). Never modify it."""
    return cmp.load_entry(key, device_name)


def _demo_api():
    try:
        from toast_core import demo
    except ImportError:  # an installation without the demo module
        return None
    return demo


def demo_checkpoint_keys() -> list[str]:
    """Keys of the complete trained demo checkpoints present now (empty before ``prepare-demo``)."""
    demo = _demo_api()
    if demo is None:
        return []
    try:
        found = demo.demo_checkpoint_paths()
    except ToastError:
        return []
    return [f"ckpt:{p}" for p in found.values() if p is not None and Path(p).exists()]


def directory_checkpoint_keys(directory: Path) -> list[str]:
    """Every checkpoint in a directory: ``*/model.safetensors`` and ``*.safetensors`` with a config."""
    keys = []
    for p in sorted(directory.rglob("*.safetensors")):
        if p.name.startswith(".") or p.name == "last.safetensors":
            continue
        keys.append(f"ckpt:{p}")
    return keys


def base_model_keys() -> tuple[list[str], str]:
    """The models every session starts with, and a sentence saying what they are."""
    mode = models_mode()
    methods = tc.available_methods()
    tiny = [f"tiny:{m}" for m in methods]
    if mode == "tiny":
        return tiny, "random tiny models (untrained; TOAST_APP_MODELS=tiny)"
    if mode != "demo":
        d = Path(mode).expanduser()
        keys = directory_checkpoint_keys(d) if d.is_dir() else []
        if keys:
            return keys, f"checkpoints in {d}"
        return tiny, f"no checkpoints in {d}: showing random tiny models (untrained)"
    keys = demo_checkpoint_keys()
    try:  # the background-training fragment compares against these (see _background_fragment)
        st.session_state["bg-keys-at-run"] = tuple(sorted(keys))
    except Exception:  # noqa: BLE001 - called outside a Streamlit session
        pass
    if keys:
        quick = any("/demo-quick/" in k.replace(os.sep, "/") for k in keys)
        return keys, "trained demo checkpoints" + (" (quick plan: small input, few steps)" if quick else "")
    if background_active(background_status()):
        return tiny, ("the trained demo checkpoints are training in the background: random tiny models "
                      "(untrained) until the first one is complete")
    return tiny, ("the trained demo checkpoints are not there yet: showing random tiny models "
                  "(untrained). Prepare them on the Models page.")


def session_entries() -> tuple[list[cmp.ModelEntry], list[tuple[str, str]], str]:
    """This session's models (base set + the user's own), failures ``(key, message)``, and a note."""
    keys, note = base_model_keys()
    extra = [k for k in st.session_state.get("extra_models", []) if k not in keys]
    entries, failures = [], []
    dev = device()
    demo = {k for k in keys if k.startswith("ckpt:")} if models_mode() == "demo" else set()
    for key in keys + extra:
        try:
            entry = load_model(key, dev)
        except (ToastError, OSError, ValueError, RuntimeError) as e:
            failures.append((key, str(e)))
            continue
        if key in extra:
            entry = dataclasses.replace(entry, source="your checkpoint")  # a label only; same shared model
        elif key in demo:
            quick = "/demo-quick/" in key.replace(os.sep, "/")
            entry = dataclasses.replace(entry, source="demo checkpoint" + (" (quick plan)" if quick else ""))
        entries.append(entry)
    return cmp.unique_names(entries), failures, note


def save_uploaded_checkpoint(name: str, data: bytes) -> str:
    """Store an uploaded checkpoint under the cache (content-addressed) and return its model key.

    The file is only written here and its header checked; :func:`load_model` reads it safely. A file
    that is not a toast_core checkpoint is removed again and its error re-raised.
    """
    import hashlib

    from toast_core.cache import atomic_write_bytes, toast_home
    from toast_core.errors import CheckpointError

    if not data:
        raise CheckpointError(f"{name} is empty")
    if not name.lower().endswith(".safetensors"):
        raise CheckpointError(f"{name}: upload a toast_core .safetensors checkpoint")
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = toast_home() / "uploads" / f"{digest}.safetensors"
    if not path.exists():
        atomic_write_bytes(path, data)
    try:
        from toast_core.io.checkpoints import read_checkpoint_info

        read_checkpoint_info(path)
    except ToastError:
        path.unlink(missing_ok=True)
        raise
    return f"ckpt:{path}"


def resolve_checkpoint_path(text: str) -> str:
    """A user-typed server path, expanded and made absolute (the model cache key)."""
    return str(Path(text.strip()).expanduser().resolve())


def prepare_demo_available() -> bool:
    demo = _demo_api()
    return demo is not None and hasattr(demo, "prepare_demo")


def prepare_demo(progress, quick: bool = False) -> None:
    """Run the library's prepare-demo with ``progress(fraction, text)`` updates."""
    import inspect

    demo = _demo_api()
    if demo is None or not hasattr(demo, "prepare_demo"):
        from toast_core.errors import ToastError as _E

        raise _E("prepare-demo is not available in this installation")
    fn = demo.prepare_demo
    params = inspect.signature(fn).parameters
    kwargs = {}
    if "quick" in params:
        kwargs["quick"] = quick
    if "progress" in params:
        kwargs["progress"] = _progress_adapter(progress)
    fn(**kwargs)


def _progress_adapter(progress):
    """Accept the common callback shapes: (fraction, text), (done, total), (text,), (done, total, text)."""
    def cb(*args, **kwargs):
        nums = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        texts = [a for a in args if isinstance(a, str)] + [str(v) for v in kwargs.values() if isinstance(v, str)]
        if len(nums) >= 2 and nums[1]:
            frac = nums[0] / nums[1]
        elif len(nums) == 1:
            frac = nums[0] if nums[0] <= 1 else 0.0
        else:
            frac = getattr(cb, "last", 0.0)
        cb.last = frac
        progress(frac, texts[0] if texts else f"{100 * frac:.0f}%")
    return cb


# ------------------------------------------------------------------------------------------------
# Background training of the demo checkpoints (toast_core.demo.background)
# ------------------------------------------------------------------------------------------------

#: seconds between refreshes of the background-training progress (a fragment, not the whole page)
BACKGROUND_REFRESH = 2.0


def _background_api():
    try:
        from toast_core.demo import background
    except ImportError:
        return None
    return background


def background_status() -> Optional[dict]:
    """Status of the background trainer of the demo checkpoints the app shows (``TOAST_APP_MODELS=demo``
    only): the running one, else the last one of the directory whose checkpoints are on the pages.
    None when there is none."""
    bg, demo = _background_api(), _demo_api()
    if bg is None or demo is None or models_mode() != "demo":
        return None
    found = [s for s in (bg.read_status(demo.demo_dir(q)) for q in (False, True)) if s]
    active = [s for s in found if s.get("state") in bg.ACTIVE]
    if active:
        return active[0]
    keys = demo_checkpoint_keys()
    quick = any("/demo-quick/" in k.replace(os.sep, "/") for k in keys)
    status = bg.read_status(demo.demo_dir(quick)) if keys else (found[0] if found else None)
    return status


def background_active(status: Optional[dict]) -> bool:
    bg = _background_api()
    return bool(status) and bg is not None and status.get("state") in bg.ACTIVE


def pending_demo_methods() -> list[str]:
    """Registered methods whose trained demo checkpoint is not there yet while others are (shown as
    "training in the background" or "not trained yet" instead of missing silently)."""
    if models_mode() != "demo":
        return []
    keys = demo_checkpoint_keys()
    if not keys:
        return []
    present = {Path(k[len("ckpt:"):]).parent.name for k in keys}
    return [m for m in tc.available_methods() if m not in present]


def _background_text(status: Optional[dict], method: Optional[str] = None) -> tuple[float, str]:
    """(progress fraction of the current run, one line) for the progress widgets."""
    bg = _background_api()
    if not background_active(status):
        return 0.0, ""
    now = status.get("method")
    if method is not None and now != method:
        if now is None:
            return 0.0, f"{method}: waiting for the background trainer to start"
        return 0.0, f"{method}: waiting (the background trainer is on {now})"
    total, step = status.get("total") or 0, status.get("step") or 0
    return (min(1.0, step / total) if total else 0.0), bg.describe(status)


def _render_background(status: Optional[dict], where: str, method: Optional[str]) -> None:
    fraction, line = _background_text(status, method)
    with st.container(key=f"bg-{where}"):
        if where == "sidebar":
            methods = status.get("methods") or []
            st.markdown(f"**Training in the background:** {', '.join(methods)}",
                        help="Runs in its own process at lower CPU priority (nice) while you use the app. "
                             "Each model joins the pages when its checkpoint is complete; no restart needed. "
                             "Restarting the app does not start a second training: it resumes.")
        st.progress(fraction, text=line)
        if where != "sidebar":
            st.caption("Full fine-tuning trains in the background at lower CPU priority; this panel fills in "
                       "when its checkpoint is complete (no reload needed)." if method == "finetune" else
                       "Trains in the background; this panel fills in when its checkpoint is complete.")


@st.fragment(run_every=BACKGROUND_REFRESH)
def _background_fragment(where: str, method: Optional[str]) -> None:
    """Re-read the trainer's status every few seconds; when a demo checkpoint became complete, or the
    trainer ended, rerun the whole page so the model joins (or the final state shows)."""
    keys = tuple(sorted(demo_checkpoint_keys()))
    status = background_status()
    if keys != st.session_state.get("bg-keys-at-run") or not background_active(status):
        st.rerun(scope="app")
    _render_background(status, where, method)


def background_progress(where: str, method: Optional[str] = None) -> None:
    """The background trainer's progress (live while it runs) or why a model is missing.

    Args:
        where: ``"sidebar"`` or a panel name (element key ``bg-<where>``).
        method: for a panel: the method it stands for.
    """
    status = background_status()
    if background_active(status):
        _background_fragment(where, method)
        return
    if method is None:
        return
    bg = _background_api()
    with st.container(key=f"bg-{where}"):
        if status and status.get("state") in ("failed", "stopped", "interrupted") and method in (status.get("methods") or []):
            st.warning(f"Background training: {bg.describe(status)}", icon=":material/warning:")
        st.markdown(f"Not trained yet. Train it in the background on the **Models** page, or run "
                    f"`python -m toast_core prepare-demo`.")


def background_sidebar() -> None:
    """The sidebar's background-training block (nothing when no trainer runs)."""
    status = background_status()
    if background_active(status):
        with st.sidebar:
            background_progress("sidebar")


def untrained_notice(entries: list[cmp.ModelEntry]) -> None:
    """A visible label whenever random models are on the page."""
    names = [e.name for e in entries if not e.trained]
    if names:
        st.warning(f"Untrained (random) models: {', '.join(names)}. Their maps and predictions show the "
                   "architecture only. Prepare the trained demo checkpoints on the **Models** page.",
                   icon=":material/warning:")
        st.page_link("views/models.py", label="Models page: prepare the demo checkpoints",
                     icon=":material/download:")


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------

@st.cache_resource(show_spinner=False)
def _generated_gallery() -> list[tuple[str, str]]:
    """Fallback gallery when ``assets/`` holds no images: default-task samples written to the cache."""
    from toast_core.cache import toast_home
    from toast_core.data import write_demo_samples

    out = toast_home() / "gallery"
    paths = sorted(p for p in out.glob("*.png") if not p.stem.endswith("_mask")) if out.is_dir() else []
    if not paths:
        paths = write_demo_samples(out, n=8)
    return [(f"sample/{p.stem}", str(p)) for p in paths]


def gallery() -> list[tuple[str, str]]:
    """``(label, path)`` of every image under ``assets/`` (masks excluded), or generated samples."""
    items = []
    if ASSETS.is_dir():
        for p in sorted(ASSETS.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.stem.endswith("_mask"):
                rel = p.relative_to(ASSETS)
                items.append((str(rel.with_suffix("")), str(p)))
    return items or _generated_gallery()


@st.cache_resource(show_spinner=False, max_entries=64)
def _gallery_image(path: str, mtime_ns: int) -> tuple[Image.Image, str]:
    img = cmp.working_copy(tc.load_image(path))
    return img, cmp.image_id(img)


def gallery_image(path: str) -> tuple[Image.Image, str]:
    """A gallery image's working copy and id (shared, read-only)."""
    return _gallery_image(path, Path(path).stat().st_mtime_ns)


def uploads() -> "OrderedDict[str, tuple[Image.Image, str]]":
    if "uploads" not in st.session_state:
        st.session_state["uploads"] = OrderedDict()
    return st.session_state["uploads"]


def add_upload(name: str, data: bytes) -> str:
    """Decode an uploaded image (raises InputError with a clear message) and make it current."""
    img = cmp.working_copy(tc.load_image(data))
    label = f"upload/{name}"
    store = uploads()
    store.pop(label, None)
    store[label] = (img, cmp.image_id(img))
    while len(store) > MAX_SESSION_UPLOADS:
        store.popitem(last=False)
    st.session_state[KEEP + "image"] = label
    return label


def upload_widget() -> None:
    """The image uploader: a readable image becomes the current one; anything else shows its error."""
    # No ``type=`` filter: Streamlit would raise on a disallowed extension sent by a client, and the
    # loader decides by content anyway (every refusal gets its own message).
    f = st.file_uploader("Upload an image (JPEG, PNG, WebP, BMP, TIFF)", key="upload",
                         help="Read by content, not by name; other files are refused with a message.")
    if f is None:
        return
    done = st.session_state.setdefault("upload-results", {})
    if f.file_id not in done:
        try:
            done[f.file_id] = ("ok", add_upload(f.name, f.getvalue()))
        except ToastError as e:
            done[f.file_id] = ("error", str(e))
        while len(done) > 16:
            done.pop(next(iter(done)))
    status, text = done[f.file_id]
    if status == "error":
        st.error(f"Could not use **{f.name}**: {text}", icon=":material/block:")


def image_options() -> list[str]:
    """Every image a page can use: this session's uploads (newest first), then the gallery."""
    return list(uploads().keys())[::-1] + [label for label, _ in gallery()]


def image_picker(label: str = "Image") -> tuple[str, Image.Image, str]:
    """The page-shared image selectbox. Returns ``(label, working copy, image id)``."""
    items = gallery()
    options = list(uploads().keys())[::-1] + [lbl for lbl, _ in items]
    key = KEEP + "image"
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]
    choice = st.selectbox(label, options, key=key)
    return (choice, *resolve_image(choice, items))


def resolve_image(choice: str, items: Optional[list[tuple[str, str]]] = None) -> tuple[Image.Image, str]:
    """Working copy and id of an image option (an upload of this session or a gallery label)."""
    if choice in uploads():
        return uploads()[choice]
    paths = dict(items if items is not None else gallery())
    if choice not in paths:
        raise KeyError(f"no image {choice!r} in this session")
    return gallery_image(paths[choice])


# ------------------------------------------------------------------------------------------------
# Small shared widgets
# ------------------------------------------------------------------------------------------------

def sidebar_status(note: str) -> None:
    """Device and model-source lines at the bottom of the sidebar (on every page)."""
    with st.sidebar:
        st.caption(f"**Device:** {cmp.device_label(device())}", help="CUDA with bf16 autocast when a GPU is "
                   "present, otherwise CPU in float32.")
        st.caption(f"**Models:** {note}")
    background_sidebar()


def sanitize_choice(key: str, options: list) -> None:
    """Drop values a multiselect's saved state holds that are no longer options (a removed model,
    an upload that left the session)."""
    value = st.session_state.get(key)
    if isinstance(value, list):
        kept = [v for v in value if v in options]
        if kept != value:
            st.session_state[key] = kept


def methods_multiselect(names: list[str], label: str = "Methods") -> list[str]:
    """The page-shared methods multiselect (default: all). Models that appear later (a user's own
    checkpoint, the demo checkpoints) join the selection; models that are gone leave it."""
    key = KEEP + "methods"
    known = st.session_state.get("methods-known", [])
    current = st.session_state.get(key, names)
    new = [n for n in names if n not in known]
    chosen = [n for n in current if n in names] + [n for n in new if n not in current]
    st.session_state[key] = chosen if (chosen or not known) else names
    st.session_state["methods-known"] = list(names)
    return st.multiselect(label, names, key=key, help="Listed from the loaded models and checkpoints.")


def kind_select(key: str, attention_only: bool = False, default: str = "cls") -> str:
    kinds = list(ATTENTION_KINDS) if attention_only else list(MAP_KINDS)
    if st.session_state.get(key) not in kinds:
        st.session_state[key] = default
    return st.selectbox("Map kind", kinds, key=key, format_func=lambda k: MAP_KINDS[k],
                        help="CLS attention: softmax weights of the CLS query on each patch (one layer, per "
                             "head or head mean). Rollout: product of attention over layers (Abnar & Zuidema). "
                             "Token norm: L2 norm of each output token. Integrated Gradients (captum): "
                             "attribution of the predicted class to the pixels, per patch.")


def layer_slider(key: str, depth: int) -> int:
    """1-based layer slider (default last); returns the 0-based layer."""
    if not isinstance(st.session_state.get(key), int) or not 1 <= st.session_state[key] <= depth:
        st.session_state[key] = depth
    if depth == 1:
        st.caption("Layer 1 (the models have one layer)")
        return 0
    return st.slider("Layer", 1, depth, key=key) - 1


def head_control(key: str, num_heads: int, allow_all: bool = True) -> Optional[int] | str:
    """Head mean (None), one head (int) or every head (``"all"``)."""
    options = ["mean", "one head"] + (["all heads"] if allow_all else [])
    if st.session_state.get(key) not in options:
        st.session_state[key] = "mean"
    mode = st.radio("Heads", options, key=key, horizontal=True)
    if mode == "one head":
        return int(st.number_input("Head", 0, num_heads - 1, 0, key=key + "-index"))
    return "all" if mode == "all heads" else None


def colormap_select(key: str, default: str = "inferno") -> str:
    if st.session_state.get(key) not in COLORMAPS:
        st.session_state[key] = default
    return st.selectbox("Colormap", COLORMAPS, key=key)


def opacity_slider(key: str, default: float = 0.55) -> float:
    if key not in st.session_state:
        st.session_state[key] = default
    return st.slider("Map opacity", 0.0, 1.0, step=0.05, key=key)


def pass_select(key: str, entries: list[cmp.ModelEntry]) -> Optional[str]:
    """TOAST pass for two-pass models: the prediction (top-down) pass or the first (bottom-up) pass."""
    if not any(e.is_toast for e in entries):
        return None
    options = ["final", "first"]
    if st.session_state.get(key) not in options:
        st.session_state[key] = "final"
    return st.radio("TOAST pass", options, key=key, horizontal=True,
                    format_func=lambda p: {"final": "top-down (prediction)", "first": "bottom-up (first)"}[p],
                    help="Two-pass models (TOAST) show this pass; single-pass models always show their only pass.")


def predictions_text(preds: list[tuple[str, float]]) -> str:
    return " · ".join(f"{label} **{100 * p:.1f}%**" for label, p in preds)


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


# ------------------------------------------------------------------------------------------------
# Clicking a patch on a plotly map
# ------------------------------------------------------------------------------------------------

def add_patch_picker(fig, display_shape: tuple[int, int], grid: tuple[int, int],
                     chosen: Optional[tuple[int, int]] = None) -> None:
    """Add a nearly invisible marker at every patch centre (clickable, ``customdata`` = row, col) to a
    :func:`toast_core.viz.render.heatmap_figure`, and outline the chosen patch."""
    import numpy as np
    import plotly.graph_objects as go

    H, W = display_shape
    h, w = grid
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    xs = (cc.ravel() + 0.5) * W / w - 0.5
    ys = (rr.ravel() + 0.5) * H / h - 0.5
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="markers", customdata=np.stack([rr.ravel(), cc.ravel()], axis=-1),
        marker={"size": max(6, min(24, int(300 / max(h, w)))), "symbol": "square", "color": "white", "opacity": 0.02},
        hovertemplate="patch (row %{customdata[0]}, col %{customdata[1]})<br>click: take ξ here<extra></extra>",
        showlegend=False, name="patches"))
    if chosen is not None:
        r, c = chosen
        fig.add_trace(go.Scatter(
            x=[(c + 0.5) * W / w - 0.5], y=[(r + 0.5) * H / h - 0.5], mode="markers", hoverinfo="skip",
            marker={"size": max(8, min(28, int(320 / max(h, w)))), "symbol": "square-open", "color": "cyan",
                    "line": {"width": 2}}, showlegend=False, name="ξ patch"))


def patch_from_point(point: dict, grid: tuple[int, int],
                     display_shape: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
    """The (row, col) of a clicked plotly point: from its ``customdata`` or from its x/y (pixels)."""
    h, w = grid
    cd = point.get("customdata")
    if isinstance(cd, (list, tuple)) and len(cd) >= 2:
        try:
            r, c = int(cd[0]), int(cd[1])
        except (TypeError, ValueError):
            r, c = -1, -1
        if 0 <= r < h and 0 <= c < w:
            return r, c
    x, y = point.get("x"), point.get("y")
    if display_shape is None or not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
        return None
    H, W = display_shape
    r = min(h - 1, max(0, int((y + 0.5) * h / H)))
    c = min(w - 1, max(0, int((x + 0.5) * w / W)))
    return r, c


# ------------------------------------------------------------------------------------------------
# Figure preview (drawing a paper figure takes a while: reuse it across reruns)
# ------------------------------------------------------------------------------------------------

def spec_digest(spec) -> str:
    """sha256 of a :class:`toast_core.viz.export.FigureSpec`: its settings, maps and images."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True, default=str).encode())
    for row in spec.panels:
        for image, m in row:
            h.update(m.tobytes())
            if image is not None:
                h.update(hashlib.sha1(image.tobytes()).digest())
    return h.hexdigest()


@st.cache_data(max_entries=16, show_spinner="Drawing the figure…")
def figure_preview(digest: str, _spec, dpi: int = 90) -> bytes:
    """PNG preview of a figure spec, cached by :func:`spec_digest`."""
    from toast_core.viz import export

    return export.figure_bytes(export.build_figure(_spec), "png", dpi=dpi)
