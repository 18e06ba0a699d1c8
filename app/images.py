"""Images on the pages: the gallery (``assets/`` or generated samples), this session's uploads, and the
page-shared image picker. Working copies are cached and shared read-only."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Optional

import streamlit as st
from PIL import Image

import toast_core as tc
from toast_core import compare as cmp
from toast_core.cache import toast_home
from toast_core.data import write_demo_samples
from toast_core.errors import ToastError

from .config import ASSETS, IMAGE_SUFFIXES, KEEP, MAX_SESSION_UPLOADS
from .datasets import dataset_gallery

@st.cache_resource(show_spinner=False)
def _generated_gallery() -> list[tuple[str, str]]:
    """Fallback gallery when ``assets/`` holds no images: default-task samples written to the cache."""
    out = toast_home() / "gallery"
    paths = sorted(p for p in out.glob("*.png") if not p.stem.endswith("_mask")) if out.is_dir() else []
    if not paths:
        paths = write_demo_samples(out, n=8)
    return [(f"sample/{p.stem}", str(p)) for p in paths]


def gallery() -> list[tuple[str, str]]:
    """``(label, path)`` of every image under ``assets/`` (masks excluded), or generated samples; the
    selected dataset's held-out images first when the session shows a dataset's models."""
    items = []
    if ASSETS.is_dir():
        for p in sorted(ASSETS.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.stem.endswith("_mask"):
                rel = p.relative_to(ASSETS)
                items.append((str(rel.with_suffix("")), str(p)))
    return dataset_gallery() + (items or _generated_gallery())


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
