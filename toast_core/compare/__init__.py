"""Side-by-side comparison of transfer methods on one image: the library layer under the app's pages
and the ``figure`` command. Pure over the core API (no Streamlit import), thread-safe, cached.

A :class:`ModelEntry` is a loaded model plus what the pages show about it. Every model runs **once per
image** (and per steering setting): :func:`record` keeps one :class:`Recording` per
``(model key, image id, td_scale, ξ patch)`` in a small LRU, and every layer, head, pass and map kind
is derived from it. The full attention matrices are kept head-averaged only (what rollout uses).
Models are never modified: recording is thread-local, inference runs under ``torch.inference_mode``
(Integrated Gradients needs gradients w.r.t. the input only), and a loaded model's parameters are
frozen before it is shared.

Example::

    entries = [load_entry(f"tiny:{m}") for m in available_methods()]
    panels = compare(entries, image, kind="cls", layer=None)          # one Panel per model, last layer
    diffs = differences(panels, reference="linear")                   # name -> (h, w)
    insp = inspect_toast(entries[-2], image, td_scale=0.5, xi_patch=(3, 4))

Layers are 0-based here (the pages and the CLI show them 1-based).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..maps import ATTENTION_KINDS, MAP_KINDS, compute_map, describe_map, integrated_gradients
from ..recording import AttentionResult, extract_attention

#: Tiny random models for tests and for a first look before any checkpoint exists (8x8 patch grid).
TINY_SPEC: dict = dict(backbone="vit_tiny_patch16_224", img_size=64, num_classes=10,
                       backbone_kwargs=dict(patch_size=8, depth=4, embed_dim=48, num_heads=3))
#: Longest side of the working copy every model's input is resized from (see :func:`working_copy`).
WORKING_SIDE = 512
#: Longest side of the image shown under the maps (pages and figures).
DISPLAY_SIDE = 320
HeadChoice = Union[None, int, str]  # None = head mean, an int = one head, "all" = every head


# ------------------------------------------------------------------------------------------------
# Device
# ------------------------------------------------------------------------------------------------

def default_device() -> str:
    """``$TOAST_DEVICE`` if set, else ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    env = os.environ.get("TOAST_DEVICE")
    if env:
        return env
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_label(device: str) -> str:
    """What the pages print, e.g. ``"CUDA · NVIDIA H200 · bf16 autocast"`` or ``"CPU · float32"``."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"CUDA · {torch.cuda.get_device_name(torch.device(device))} · bf16 autocast"
    return f"{device.upper()} · float32"


def _autocast(device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ModelEntry:
    """A loaded model and its description. Shared between sessions: treat as read-only.

    Attributes:
        key: what it was loaded from (``"tiny:toast"``, ``"ckpt:/abs/path.safetensors"``); the cache key.
        name: display name (unique within a set, see :func:`unique_names`).
        method: registered method name.
        model: the :class:`~toast_core.methods.base.TransferModel` (eval mode, parameters frozen).
        source: how it came to be ("checkpoint", "random tiny model (untrained)", ...).
        trained: False for random models (the pages say so).
        info: backbone, trainable/total/share, accuracy, class_names, sha256, path, num_layers, ...
        device: where it runs.
    """

    key: str
    name: str
    method: str
    model: torch.nn.Module
    source: str
    trained: bool
    info: dict = field(default_factory=dict)
    device: str = "cpu"

    @property
    def num_layers(self) -> int:
        return len(self.model.vit.blocks)

    @property
    def num_heads(self) -> int:
        return int(self.model.vit.blocks[0].attn.num_heads)

    @property
    def is_toast(self) -> bool:
        """Models with a bottom-up and a top-down pass (they accept ``td_scale`` and ``xi``)."""
        return hasattr(self.model, "token_at") and hasattr(self.model, "decoders")

    @property
    def class_names(self) -> list[str]:
        return list(self.info.get("class_names") or [])


def _freeze_for_sharing(model: torch.nn.Module, device: str) -> torch.nn.Module:
    model = model.to(device).eval()
    model.requires_grad_(False)  # done once, before the model is shared; IG needs input grads only
    return model


def _find_accuracy(cfg: dict) -> Optional[float]:
    """Test accuracy from a checkpoint config (``metrics.test_accuracy``, ``test.accuracy``, ...)."""
    for holder in (cfg.get("metrics") or {}, cfg.get("test") or {}, cfg.get("eval") or {}, cfg):
        if not isinstance(holder, dict):
            continue
        for k in ("test_accuracy", "accuracy", "val_accuracy", "test_acc", "val_acc", "acc"):
            v = holder.get(k)
            if isinstance(v, (int, float)):
                return float(v)
    return None


def _find_class_names(cfg: dict, num_classes: int) -> list[str]:
    for k in ("class_names", "classes", "labels"):
        v = cfg.get(k)
        if isinstance(v, list) and len(v) == num_classes and all(isinstance(s, str) for s in v):
            return list(v)
    data = cfg.get("data")
    if isinstance(data, dict):
        return _find_class_names(data, num_classes)
    return [f"class {i}" for i in range(num_classes)]


def tiny_entry(method: str, device: str = "cpu", spec: Optional[dict] = None) -> ModelEntry:
    """A random tiny model of ``method`` (deterministic per method name; no download)."""
    from ..models import build_model

    spec = dict(spec or TINY_SPEC)
    seed = zlib.crc32(method.encode()) & 0x7FFFFFFF
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(method, pretrained=False, **spec)
    counts = model.parameter_counts()
    n = int(spec["num_classes"])
    info = {"backbone": f"{spec['backbone']} (tiny: {spec['backbone_kwargs']}, img {spec['img_size']})",
            "trainable": counts["trainable"], "total": counts["total"], "share": counts["share"],
            "accuracy": None, "class_names": [f"class {i}" for i in range(n)],
            "sha256": None, "path": None, "init": f"random, torch seed {seed}"}
    return ModelEntry(f"tiny:{method}", method, method, _freeze_for_sharing(model, device),
                      "random tiny model (untrained)", False, info, device)


def checkpoint_entry(path: str | os.PathLike, device: str = "cpu", source: str = "checkpoint") -> ModelEntry:
    """Load one of this project's checkpoints (safely: safetensors / weights-only)."""
    from ..cache import sha256_file
    from ..io.checkpoints import load_checkpoint

    model = load_checkpoint(path, device="cpu")
    cfg = dict(getattr(model, "checkpoint_info", {}) or {})
    params = cfg.get("parameters") or model.parameter_counts()
    n = int(cfg.get("num_classes") or model.vit.num_classes)
    weights = Path(cfg.get("path") or path)
    info = {"backbone": cfg.get("backbone", "?"), "trainable": params.get("trainable"),
            "total": params.get("total"), "share": params.get("share"), "accuracy": _find_accuracy(cfg),
            "class_names": _find_class_names(cfg, n), "path": str(weights),
            "sha256": sha256_file(weights) if weights.is_file() else None,
            "backbone_weights": cfg.get("backbone_weights"), "created": cfg.get("created"),
            "pretuned_from": cfg.get("pretuned_from")}
    method = str(cfg.get("method") or model.method_name)
    return ModelEntry(f"ckpt:{weights}", method, method, _freeze_for_sharing(model, device),
                      source, True, info, device)


def load_entry(key: str, device: str = "cpu") -> ModelEntry:
    """Load a model from a key: ``"tiny:<method>"`` or ``"ckpt:<path>"`` (a path alone works too).

    Raises:
        CheckpointError: unreadable or unsafe checkpoint; InputError: unknown key.
    """
    if key.startswith("tiny:"):
        from ..methods import available_methods

        method = key[5:]
        if method not in available_methods():
            raise InputError(f"unknown method {method!r} in {key!r}; available: {', '.join(available_methods())}")
        return tiny_entry(method, device)
    path = key[5:] if key.startswith("ckpt:") else key
    if not path:
        raise InputError("empty model key")
    return checkpoint_entry(path, device)


def unique_names(entries: Sequence[ModelEntry]) -> list[ModelEntry]:
    """Give entries distinct display names (method, then ``method (2)``...), keeping order."""
    seen: dict[str, int] = {}
    out = []
    for e in entries:
        seen[e.method] = seen.get(e.method, 0) + 1
        name = e.method if seen[e.method] == 1 else f"{e.method} ({seen[e.method]})"
        out.append(e if name == e.name else dataclasses.replace(e, name=name))
    return out


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (to check that nothing modified a shared model)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------

def working_copy(image: Image.Image, max_side: int = WORKING_SIDE) -> Image.Image:
    """The RGB image shrunk (bicubic, aspect kept) so its longest side is at most ``max_side``.

    Every model's input is resized from this copy, so a huge upload costs one resize, not one per model.
    """
    img = image if image.mode == "RGB" else image.convert("RGB")
    w, h = img.size
    s = max_side / max(w, h)
    if s >= 1:
        return img
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)


def image_id(image: Image.Image) -> str:
    """Content hash of an RGB image (size + pixels), 16 hex digits: the cache key of an image."""
    img = image if image.mode == "RGB" else image.convert("RGB")
    h = hashlib.sha256(f"{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:16]


def display_array(image: Image.Image, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """(H, W, 3) uint8 copy of the image for drawing maps over (aspect kept)."""
    return np.asarray(working_copy(image, max_side), dtype=np.uint8).copy()


def preprocessing(entry: ModelEntry) -> dict:
    """How images are turned into this model's input (for manifests): size, mean, std, resizing."""
    from ..models import data_config

    cfg = data_config(entry.model)
    h, w = (int(s) for s in entry.model.vit.patch_embed.img_size)
    return {"input_size": [h, w], "mean": [float(m) for m in cfg["mean"]], "std": [float(s) for s in cfg["std"]],
            "resize": f"working copy (longest side <= {WORKING_SIDE}, bicubic), then the whole image resized "
                      f"to {h}x{w} (bicubic, no crop, aspect not kept)", "colour": "RGB, EXIF orientation applied"}


def preprocess(entry: ModelEntry, image: Image.Image) -> torch.Tensor:
    """The model's input (1, 3, H, W) on its device, H x W = the size its position grid is laid out for."""
    from ..io.images import image_to_tensor

    p = preprocessing(entry)
    x = image_to_tensor(working_copy(image), tuple(p["input_size"]), p["mean"], p["std"])
    return x.unsqueeze(0).to(entry.device)


# ------------------------------------------------------------------------------------------------
# Recording (one forward per model, image and steering setting), cached
# ------------------------------------------------------------------------------------------------

class LRU:
    """A small thread-safe least-recently-used cache with hit/miss counters."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_compute(self, key, compute: Callable[[], Any]):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
        value = compute()  # outside the lock: other keys proceed in parallel
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)


RECORDINGS = LRU(int(os.environ.get("TOAST_RECORDING_CACHE", "48")))
ATTRIBUTIONS = LRU(int(os.environ.get("TOAST_ATTRIBUTION_CACHE", "16")))


@dataclass(frozen=True, eq=False)
class Recording:
    """What one model did on one image: attention of every layer/head/pass and the class probabilities.

    Attributes:
        result: the :class:`AttentionResult` (batch of 1); ``full`` holds head-averaged matrices
            ``{pass: (L, 1, 1, N, N)}`` (enough for rollout, 1/H of the memory).
        probs: (classes,) softmax of the logits.
        td_scale, xi_patch: the steering setting it was recorded with (TOAST only).
    """

    result: AttentionResult
    probs: np.ndarray
    td_scale: float = 1.0
    xi_patch: Optional[tuple[int, int]] = None

    @property
    def passes(self) -> tuple[str, ...]:
        return self.result.passes

    @property
    def num_layers(self) -> int:
        return int(self.result.cls[self.result.passes[0]].shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.result.grid)


def _steering_kwargs(entry: ModelEntry, x: torch.Tensor, td_scale: float,
                     xi_patch: Optional[tuple[int, int]]) -> dict:
    if not entry.is_toast:
        if td_scale != 1.0 or xi_patch is not None:
            raise InputError(f"{entry.name} ({entry.method}) has no top-down pass to steer")
        return {}
    kwargs: dict = {}
    if td_scale != 1.0:
        kwargs["td_scale"] = float(td_scale)
    if xi_patch is not None:
        try:
            kwargs["xi"] = entry.model.token_at(x, int(xi_patch[0]), int(xi_patch[1]))
        except ValueError as e:
            raise InputError(str(e)) from None
    return kwargs


def _run(entry: ModelEntry, image: Image.Image, td_scale: float, xi_patch) -> Recording:
    with torch.inference_mode(), _autocast(entry.device):
        x = preprocess(entry, image)
        kwargs = _steering_kwargs(entry, x, td_scale, xi_patch)
        res = extract_attention(entry.model, x, full=True, forward_kwargs=kwargs)
        slim = {p: f.float().mean(dim=2, keepdim=True) for p, f in (res.full or {}).items()}  # (L,1,1,N,N)
        res = dataclasses.replace(res, full=slim, logits=res.logits.float())
        probs = res.logits.softmax(dim=-1)[0].cpu().numpy().astype(np.float64)
    return Recording(res, probs, float(td_scale), None if xi_patch is None else tuple(int(v) for v in xi_patch))


def record(entry: ModelEntry, image: Image.Image, *, image_key: Optional[str] = None, td_scale: float = 1.0,
           xi_patch: Optional[tuple[int, int]] = None) -> Recording:
    """The model's :class:`Recording` on ``image`` (cached per model key, image, td_scale, ξ patch).

    Args:
        image: an RGB PIL image (any size; see :func:`working_copy`).
        image_key: the image's :func:`image_id` if already known (saves hashing it again).
        td_scale: TOAST only: scale of the top-down signal (0 = bottom-up, 1 = as trained).
        xi_patch: TOAST only: ``(row, col)`` of the patch whose bottom-up token replaces ξ.
    """
    ik = image_key or image_id(image)
    xp = None if xi_patch is None else (int(xi_patch[0]), int(xi_patch[1]))
    key = (entry.key, entry.device, ik, round(float(td_scale), 6), xp)
    return RECORDINGS.get_or_compute(key, lambda: _run(entry, image, float(td_scale), xp))


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float64)


def resolve_pass(rec: Recording, pass_name: Optional[str]) -> str:
    """``None``/``"final"`` = the pass the prediction comes from; ``"first"`` = the first pass;
    otherwise a recorded pass name (``"bottom-up"``, ``"top-down"``, ``"main"``)."""
    if pass_name in (None, "final"):
        return rec.result.final_pass
    if pass_name == "first":
        return rec.passes[0]
    if pass_name not in rec.passes:
        return rec.result.final_pass  # e.g. "bottom-up" asked of a single-pass model
    return pass_name


def map_of(rec: Recording, kind: str, layer: int = -1, head: Optional[int] = None,
           pass_name: Optional[str] = None) -> np.ndarray:
    """One attention-derived map (h, w) float64 from a recording (kinds: cls, rollout, token_norm)."""
    if kind not in ATTENTION_KINDS:
        raise InputError(f"map kind {kind!r} is not derived from attention; choose from {ATTENTION_KINDS}")
    with torch.inference_mode():
        m = compute_map(kind, rec.result, layer=layer, head=head if kind == "cls" else None,
                        pass_name=resolve_pass(rec, pass_name))
    return _to_numpy(m[0])


def head_maps(rec: Recording, layer: int = -1, pass_name: Optional[str] = None) -> np.ndarray:
    """Every head's CLS attention of one layer, (H, h, w)."""
    return _to_numpy(rec.result.heads[resolve_pass(rec, pass_name)][layer][0])


def attribution(entry: ModelEntry, image: Image.Image, *, image_key: Optional[str] = None, steps: int = 16,
                td_scale: float = 1.0, xi_patch: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Integrated Gradients (captum) of the predicted class, per patch, (h, w). Cached; float32 always."""
    ik = image_key or image_id(image)
    xp = None if xi_patch is None else (int(xi_patch[0]), int(xi_patch[1]))
    key = (entry.key, entry.device, ik, int(steps), round(float(td_scale), 6), xp)

    def compute() -> np.ndarray:
        with torch.inference_mode():
            x = preprocess(entry, image)
            kwargs = _steering_kwargs(entry, x, td_scale, xp)
        x = x.clone()  # a normal tensor (inference tensors cannot take part in autograd)
        kwargs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
        m = integrated_gradients(entry.model, x, steps=int(steps), forward_kwargs=kwargs,
                                 internal_batch_size=min(int(steps), 8))
        return _to_numpy(m[0])

    return ATTRIBUTIONS.get_or_compute(key, compute)


def top_predictions(probs: np.ndarray, class_names: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` most probable classes as ``(label, probability)``, most probable first."""
    order = np.argsort(-probs)[:k]
    names = list(class_names)
    return [(names[i] if i < len(names) else f"class {i}", float(probs[i])) for i in order]


# ------------------------------------------------------------------------------------------------
# Comparing models
# ------------------------------------------------------------------------------------------------

@dataclass
class Panel:
    """One model's map on the compare grid.

    Attributes:
        name, method: the entry's display name and method.
        label: what the map is (kind, layer, head, pass), as printed on screen and in exports.
        map: (h, w) float64.
        heads: (H, h, w) per-head maps when every head was asked for, else None.
        predictions: top-k ``(label, probability)``.
        layer: the model's layer used (0-based; None for Integrated Gradients).
        pass_name: the pass the map comes from.
        trained: False for random models.
    """

    name: str
    method: str
    label: str
    map: np.ndarray
    predictions: list[tuple[str, float]]
    layer: Optional[int]
    pass_name: str
    trained: bool = True
    heads: Optional[np.ndarray] = None


def common_depth(entries: Sequence[ModelEntry]) -> int:
    """Layers shared by every model (the layer slider's range)."""
    if not entries:
        raise InputError("no models selected")
    return min(e.num_layers for e in entries)


def common_heads(entries: Sequence[ModelEntry]) -> int:
    return min(e.num_heads for e in entries)


def model_layer(layer: Optional[int], num_layers: int, depth: int) -> int:
    """A layer chosen on the shared slider (0..depth-1, None = last), aligned at the output end for a
    model with ``num_layers`` layers (models of equal depth get the same index)."""
    if layer is None:
        return num_layers - 1
    layer = int(layer)
    if not 0 <= layer < depth:
        raise InputError(f"layer {layer + 1} is outside 1..{depth}")
    return layer + (num_layers - depth)


def compare(entries: Sequence[ModelEntry], image: Image.Image, *, kind: str = "cls", layer: Optional[int] = None,
            head: HeadChoice = None, pass_name: Optional[str] = None, image_key: Optional[str] = None,
            top_k: int = 3, ig_steps: int = 16) -> list[Panel]:
    """Every model's map of one kind on one image, with its top predictions.

    Args:
        entries: the models (display names should be unique, see :func:`unique_names`).
        image: RGB PIL image.
        kind: ``cls``, ``rollout``, ``token_norm`` or ``integrated_gradients``.
        layer: 0-based layer on the shared range (``None`` = last); see :func:`model_layer`.
        head: ``None`` (mean), an int (one head) or ``"all"`` (``Panel.heads`` gets every head; ``map``
            is the mean). Only CLS attention has heads.
        pass_name: ``None``/``"final"`` (prediction pass) or ``"first"`` (TOAST's bottom-up pass).

    Returns:
        one :class:`Panel` per entry, in order.
    """
    if kind not in MAP_KINDS:
        raise InputError(f"unknown map kind {kind!r}; choose from {list(MAP_KINDS)}")
    ik = image_key or image_id(image)
    depth = common_depth(entries)
    panels = []
    for e in entries:
        rec = record(e, image, image_key=ik)
        preds = top_predictions(rec.probs, e.class_names, top_k)
        if kind == "integrated_gradients":
            m = attribution(e, image, image_key=ik, steps=ig_steps)
            label = f"{MAP_KINDS[kind]} · {ig_steps} steps · predicted class"
            panels.append(Panel(e.name, e.method, label, m, preds, None, rec.result.final_pass, e.trained))
            continue
        lyr = model_layer(layer, e.num_layers, depth)
        p = resolve_pass(rec, pass_name)
        one_head = head if isinstance(head, int) and not isinstance(head, bool) else None
        if one_head is not None and not 0 <= one_head < e.num_heads:
            raise InputError(f"head {one_head} is outside 0..{e.num_heads - 1} for {e.name}")
        m = map_of(rec, kind, lyr, one_head, p)
        heads = head_maps(rec, lyr, p) if (head == "all" and kind == "cls") else None
        label = describe_map(kind, lyr, one_head, p if len(rec.passes) > 1 else None, e.num_layers)
        if heads is not None:
            label = label.replace("head mean", "all heads")
        panels.append(Panel(e.name, e.method, label, m, preds, lyr, p, e.trained, heads))
    return panels


def differences(panels: Sequence[Panel], reference: str) -> dict[str, np.ndarray]:
    """Each panel's map minus the reference panel's (signed, on the reference's patch grid).

    Maps on another grid (another backbone) are resampled bilinearly to the reference grid first.
    """
    from ..viz.render import difference_maps, upsample_map

    by_name = {p.name: p.map for p in panels}
    if reference not in by_name:
        raise InputError(f"reference {reference!r} is not one of {list(by_name)}")
    shape = by_name[reference].shape
    same = {n: (m if m.shape == shape else upsample_map(m, shape)) for n, m in by_name.items()}
    return difference_maps(same, reference, include_reference=True)


def layer_strip(entry: ModelEntry, image: Image.Image, *, kind: str = "cls", head: Optional[int] = None,
                pass_name: Optional[str] = None, image_key: Optional[str] = None, td_scale: float = 1.0,
                xi_patch: Optional[tuple[int, int]] = None) -> np.ndarray:
    """One model's maps at every layer, (L, h, w), from a single recording."""
    if kind not in ATTENTION_KINDS:
        raise InputError(f"a layer strip needs an attention map kind ({', '.join(ATTENTION_KINDS)}), not {kind!r}")
    rec = record(entry, image, image_key=image_key, td_scale=td_scale, xi_patch=xi_patch)
    return np.stack([map_of(rec, kind, layer, head, pass_name) for layer in range(rec.num_layers)])


# ------------------------------------------------------------------------------------------------
# TOAST inspector
# ------------------------------------------------------------------------------------------------

@dataclass
class ToastInspection:
    """First vs second pass of a TOAST model, its gate and top-down signal, at one steering setting.

    Attributes:
        bottom_up, top_down: (L, h, w) maps of the chosen kind at every layer, per pass.
        gate: (h, w) token selection s_i = clamp(cos(x_i, ξ), 0, 1) in [0, 1].
        td_norm: (L,) mean L2 norm of the top-down signal per layer, as applied (× td_scale).
        td_norm_trained: (L,) the same with the learned ξ and td_scale = 1.
        value_ratio: (L,) the top-down value term against the values it is added to, per layer:
            mean_i |W_v td_i| / mean_i |v_i| over tokens, as applied; value_ratio_trained: as trained.
        value_ratio_max: (L,) the largest per-token ratio |W_v td_i| / |v_i|, as applied.
        predictions: top-k at this setting; predictions_trained: as trained (td_scale 1, learned ξ).
        probs, probs_trained: (classes,) probabilities.
        grid: (h, w); td_scale, xi_patch: the setting; xi_source: a human label for ξ.
    """

    name: str
    kind: str
    bottom_up: np.ndarray
    top_down: np.ndarray
    gate: np.ndarray
    td_norm: np.ndarray
    td_norm_trained: np.ndarray
    value_ratio: np.ndarray
    value_ratio_trained: np.ndarray
    value_ratio_max: np.ndarray
    predictions: list[tuple[str, float]]
    predictions_trained: list[tuple[str, float]]
    probs: np.ndarray
    probs_trained: np.ndarray
    grid: tuple[int, int]
    td_scale: float
    xi_patch: Optional[tuple[int, int]]
    xi_source: str


def inspect_toast(entry: ModelEntry, image: Image.Image, *, kind: str = "cls", head: Optional[int] = None,
                  td_scale: float = 1.0, xi_patch: Optional[tuple[int, int]] = None,
                  image_key: Optional[str] = None, top_k: int = 3) -> ToastInspection:
    """Everything the TOAST inspector shows, for one steering setting.

    Args:
        entry: a TOAST or TOAST-Lite model (``entry.is_toast``).
        kind: attention map kind for the per-layer strips.
        td_scale: 0 = bottom-up only, 1 = as trained, >1 amplified (the first pass never changes).
        xi_patch: ``(row, col)``: take ξ from this patch's bottom-up token instead of the learned ξ.
    """
    if not entry.is_toast:
        raise InputError(f"{entry.name} ({entry.method}) has no top-down pass; pick a TOAST model")
    if td_scale < 0:
        raise InputError(f"td_scale must be >= 0, got {td_scale}")
    ik = image_key or image_id(image)
    rec = record(entry, image, image_key=ik, td_scale=td_scale, xi_patch=xi_patch)
    trained = record(entry, image, image_key=ik)
    first, last = rec.passes[0], rec.passes[-1]
    strip = lambda p: np.stack([map_of(rec, kind, i, head, p) for i in range(rec.num_layers)])  # noqa: E731
    gate = _to_numpy(rec.result.gate[0]) if rec.result.gate is not None else np.zeros(rec.grid)
    td = _to_numpy(rec.result.td_norm[:, 0]) * abs(td_scale)
    n_layers = rec.num_layers

    def ratio(r, key):  # td_scale 0 steers nothing: no value term is added, the ratio is 0
        value = getattr(r.result, key)
        return np.zeros(n_layers) if value is None else _to_numpy(value[:, 0])
    names = entry.class_names
    return ToastInspection(
        name=entry.name, kind=kind, bottom_up=strip(first), top_down=strip(last), gate=gate, td_norm=td,
        td_norm_trained=_to_numpy(trained.result.td_norm[:, 0]),
        value_ratio=ratio(rec, "value_ratio"), value_ratio_trained=ratio(trained, "value_ratio"),
        value_ratio_max=ratio(rec, "value_ratio_max"),
        predictions=top_predictions(rec.probs, names, top_k),
        predictions_trained=top_predictions(trained.probs, names, top_k),
        probs=rec.probs, probs_trained=trained.probs, grid=rec.grid, td_scale=float(td_scale),
        xi_patch=rec.xi_patch,
        xi_source="learned ξ" if xi_patch is None else
        f"bottom-up token of patch (row {xi_patch[0]}, col {xi_patch[1]})")


def stage1_table(stage1: dict) -> str:
    """A TOAST checkpoint's stage-1 record (``pretuned_from.stage1``) as a markdown table."""
    from ..training.stage1 import diagnostics_markdown

    settings = stage1.get("settings") or {}
    xi_init = settings.get("xi_init", "cls-minus-patch")  # stage-1 fits from before the setting used it
    head = (f"{stage1.get('kind', '?')} fit, td gain {settings.get('td_gain', '?')}, ξ start {xi_init}, "
            f"{settings.get('n_fit', '?')} generic crops at {settings.get('image_size', '?')} px.\n\n")
    return head + diagnostics_markdown(stage1["diagnostics"])


# ------------------------------------------------------------------------------------------------
# Paper figures
# ------------------------------------------------------------------------------------------------

def model_provenance(entry: ModelEntry) -> dict:
    """What identifies a model in a manifest: method, backbone, checkpoint hash or random init."""
    info = entry.info
    return {"name": entry.name, "method": entry.method, "key": entry.key, "source": entry.source,
            "trained": entry.trained, "backbone": info.get("backbone"), "checkpoint": info.get("path"),
            "checkpoint_sha256": info.get("sha256"), "backbone_weights": info.get("backbone_weights"),
            "init": info.get("init"), "num_layers": entry.num_layers, "num_heads": entry.num_heads,
            "preprocessing": preprocessing(entry), "device": entry.device}


def figure_spec(entries: Sequence[ModelEntry], images: Sequence[tuple[str, Image.Image]], *,
                columns: str = "layers", layers: Sequence[Optional[int]] = (None,), kind: str = "cls",
                head: Optional[int] = None, pass_name: Optional[str] = None, ig_steps: int = 16,
                title: str = "", cmap: Optional[str] = None, scale: str = "shared",
                percentile: Optional[float] = None, alpha: float = 0.5, font_size: float = 8.0,
                dpi: int = 300, colorbar: bool = True, panel_inches: float = 1.6,
                display_side: int = DISPLAY_SIDE):
    """A paper figure: rows = models, columns = layers (of the first image) or images (at one layer).

    Args:
        entries: the row models; images: ``(label, PIL image)`` pairs.
        columns: ``"layers"`` or ``"images"``.
        layers: 0-based layers on the shared range (None = last); with ``columns="images"`` the first
            is used. Ignored for Integrated Gradients (one column per image).
        display_side: longest side (pixels) of the image drawn under each map.
        Other arguments: see :class:`toast_core.viz.export.FigureSpec`.

    Returns:
        ``(spec, maps_meta, provenance)`` ready for :func:`toast_core.viz.export.build_figure` and
        :func:`toast_core.viz.export.export_bundle`.
    """
    from ..viz.export import FigureSpec

    if columns not in ("layers", "images"):
        raise InputError(f"columns must be 'layers' or 'images', got {columns!r}")
    if not entries:
        raise InputError("pick at least one model for the figure's rows")
    if not images:
        raise InputError("pick at least one image")
    if kind not in MAP_KINDS:
        raise InputError(f"unknown map kind {kind!r}; choose from {list(MAP_KINDS)}")
    entries = unique_names(entries)
    depth = common_depth(entries)
    keyed = [(label, img, image_id(img), display_array(img, display_side)) for label, img in images]
    if kind == "integrated_gradients" or columns == "images":
        cols = [(lbl, img, ik, disp, layers[0] if layers else None) for lbl, img, ik, disp in
                (keyed if columns == "images" else keyed[:1])]
    else:
        if not layers:
            raise InputError("pick at least one layer")
        lbl, img, ik, disp = keyed[0]
        cols = [(lbl, img, ik, disp, layer) for layer in layers]

    panels, meta = [], {}
    for r, e in enumerate(entries):
        row = []
        for c, (lbl, img, ik, disp, layer) in enumerate(cols):
            if kind == "integrated_gradients":
                m, lyr = attribution(e, img, image_key=ik, steps=ig_steps), None
                p = None
            else:
                rec = record(e, img, image_key=ik)
                lyr = model_layer(layer, e.num_layers, depth)
                p = resolve_pass(rec, pass_name)
                m = map_of(rec, kind, lyr, head, p)
            row.append((disp, m))
            meta[f"map_r{r}_c{c}"] = {"model": e.name, "method": e.method, "image": lbl, "image_id": ik,
                                      "map_kind": kind, "layer": None if lyr is None else lyr + 1,
                                      "head": "mean" if head is None else head, "pass": p,
                                      "ig_steps": ig_steps if kind == "integrated_gradients" else None}
        panels.append(row)

    if kind == "integrated_gradients":
        kind_label = f"{MAP_KINDS[kind]} ({ig_steps} steps, predicted class)"
        col_labels = [c[0] for c in cols]
    else:
        head_txt = "head mean" if head is None else f"head {head}"
        pass_txt = "" if pass_name in (None, "final") else f", {pass_name} pass"
        kind_label = MAP_KINDS[kind] + (f", {head_txt}" if kind == "cls" else "") + pass_txt
        if columns == "layers":
            col_labels = [f"layer {model_layer(c[4], depth, depth) + 1}" for c in cols]
            kind_label += f" · {cols[0][0]}"
        else:
            col_labels = [c[0] for c in cols]
            kind_label += f" · layer {model_layer(cols[0][4], depth, depth) + 1}/{depth}"
    row_labels = [e.name + ("" if e.trained else " (untrained)") for e in entries]
    spec = FigureSpec(panels=panels, map_kind=kind_label, row_labels=row_labels, col_labels=col_labels,
                      title=title, cmap=cmap, scale=scale, percentile=percentile, alpha=alpha,
                      font_size=font_size, dpi=dpi, colorbar=colorbar, panel_inches=panel_inches)
    from .. import __version__

    provenance = {
        "toast_core": __version__,
        "models": [model_provenance(e) for e in entries],
        "images": [{"label": lbl, "image_id": ik, "size": list(img.size)} for lbl, img, ik, _ in keyed],
        "map_kind": kind, "map_label": kind_label, "head": "mean" if head is None else head,
        "pass": pass_name or "final", "columns": columns,
        "layers": [None if lyr is None else model_layer(lyr, depth, depth) + 1 for lyr in layers],
        "normalisation": {"scale": scale, "percentile": percentile,
                          "maps": "raw values (attention probabilities, token norms or |IG| per patch)"},
        "display": {"image_side": display_side, "alpha": alpha, "upsample": "bilinear"},
    }
    return spec, meta, provenance
