"""Read and write model weights without ever executing code from a file.

Reading decides by content: a safetensors file goes to ``safetensors``; a PyTorch file (zip archive
or legacy pickle) goes to ``torch.load(..., weights_only=True)``, whose unpickler only builds tensors
and plain containers and refuses any other Python object. Anything else is refused unread. Every
failure is a :class:`~toast_core.errors.CheckpointError` whose message says what is wrong.
Writing always produces safetensors, atomically (temporary file + ``os.replace``).
"""
from __future__ import annotations

import json
import os
import re
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "params")
_EMA_WRAPPERS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")
_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile
_MAX_HEADER = 100 * 2**20  # a safetensors JSON header larger than this is not plausible


@dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found.

    Attributes:
        tensors: parameter name -> tensor (wrappers and ``module.`` prefixes removed).
        metadata: simple values found beside the weights (``epoch``, ``arch``, safetensors header
            metadata), as strings.
        dropped: names of entries that were neither tensors nor simple values (optimizer state...).
        format: ``"safetensors"`` or ``"torch"``.
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    format: str = ""


def _check_file(path: Path, max_bytes: int) -> int:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a regular file: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointError(f"checkpoint too large: {size} bytes exceeds the limit of {max_bytes} bytes ({path.name})")
    if size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path.name}")
    return size


def _safetensors_header_len(head: bytes) -> int | None:
    """Length of the JSON header if ``head`` starts like a safetensors file, else None."""
    if len(head) < 9 or head[8:9] != b"{":
        return None
    n = int.from_bytes(head[:8], "little")
    return n if 2 <= n <= _MAX_HEADER else None


def _is_torch_file(head: bytes) -> bool:
    """PyTorch zip archive, or a legacy pickle (protocol 2-5)."""
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def _load_safetensors(path: Path, size: int, header_len: int, device: str) -> tuple[dict, dict[str, str]]:
    if 8 + header_len > size:
        raise CheckpointError(f"truncated safetensors file: header claims {header_len} bytes, file has {size} ({path.name})")
    try:
        tensors = load_file(str(path), device=device)
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends for a corrupt file
        raise CheckpointError(f"corrupt or truncated safetensors file {path.name}: {e}") from e
    return tensors, read_safetensors_metadata(path)


def _load_torch(path: Path, map_location) -> object:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - hostile pickles can fail in any way; none runs code
        msg = str(e)
        if "Weights only load failed" in msg:
            found = re.search(r"GLOBAL ([\w.]+)", msg)
            what = f" (it asks for {found.group(1)})" if found else ""
            raise CheckpointError(
                f"refused {path.name}: the file contains Python objects that would need code to run to load"
                f"{what}; it was not loaded. Only tensors and plain containers are accepted - re-save the "
                "weights as a plain state dict or as safetensors") from e
        if "TorchScript" in msg:
            raise CheckpointError(f"refused {path.name}: it is a TorchScript archive (compiled code), "
                                  "not a state dict") from e
        raise CheckpointError(f"corrupt, truncated or not a PyTorch checkpoint: {path.name} "
                              f"({type(e).__name__}: {msg.splitlines()[0][:200] if msg else ''})") from e


def _unwrap(obj: object, prefer_ema: bool, meta: dict[str, str], dropped: list[str]) -> Mapping:
    """Descend through training-checkpoint wrappers ({'model': {...}, 'epoch': 3} ...)."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"not a state dict: the file holds a {type(obj).__name__}, not a dict of tensors")
        keys = (_EMA_WRAPPERS + _WRAPPERS) if prefer_ema else (_WRAPPERS + _EMA_WRAPPERS)
        inner = next((k for k in keys if isinstance(obj.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for k, v in obj.items():
            if k != inner:
                _collect(str(k), v, meta, dropped)
        obj = obj[inner]
    return obj


def _collect(name: str, value: object, meta: dict[str, str], dropped: list[str]) -> None:
    if isinstance(value, (str, int, float, bool)) or value is None:
        meta[name] = str(value)
    else:
        dropped.append(name)


def _flatten(obj: Mapping, prefix: str, out: dict, meta: dict[str, str], dropped: list[str]) -> None:
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            out[name] = v.detach()
        elif isinstance(v, Mapping):
            _flatten(v, name + ".", out, meta, dropped)
        else:
            _collect(name, v, meta, dropped)


def _strip_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and tensors:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in tensors):
                tensors = {k[len(p):]: v for k, v in tensors.items()}
                changed = True
    return tensors


def read_checkpoint(path: str | os.PathLike, *, max_bytes: int = 2 * 2**30, map_location: str | torch.device = "cpu",
                    prefer_ema: bool = False) -> Checkpoint:
    """Read weights from a safetensors or PyTorch file without executing code.

    Args:
        path: the checkpoint file. Its content, not its extension, decides how it is read.
        max_bytes: refuse files larger than this.
        map_location: device the tensors are loaded onto.
        prefer_ema: when a training checkpoint holds both weights and EMA weights, take the EMA ones.

    Returns:
        A :class:`Checkpoint` (tensors, metadata, names of dropped entries, format).
    """
    path = Path(path)
    size = _check_file(path, max_bytes)
    with open(path, "rb") as f:
        head = f.read(16)
    meta: dict[str, str] = {}
    dropped: list[str] = []
    header_len = _safetensors_header_len(head)
    if header_len is not None:
        raw, meta = _load_safetensors(path, size, header_len, str(map_location))
        fmt = "safetensors"
    elif _is_torch_file(head):
        raw, fmt = _load_torch(path, map_location), "torch"
    elif path.suffix == ".safetensors":
        raise CheckpointError(f"corrupt safetensors file {path.name}: the header is missing or damaged")
    else:
        raise CheckpointError(f"not a checkpoint: {path.name} is neither safetensors nor a PyTorch file")
    tensors: dict[str, torch.Tensor] = {}
    _flatten(_unwrap(raw, prefer_ema, meta, dropped), "", tensors, meta, dropped)
    if not tensors:
        raise CheckpointError(f"the checkpoint {path.name} contains no tensors (empty state dict)")
    return Checkpoint(_strip_prefixes(tensors), meta, dropped, fmt)


def load_state_dict(path: str | os.PathLike, *, max_bytes: int = 2 * 2**30,
                    map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, read safely (see :func:`read_checkpoint`). Returns name -> tensor."""
    return read_checkpoint(path, max_bytes=max_bytes, map_location=map_location).tensors


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (``{}`` if none), read without loading tensors."""
    path = Path(path)
    size = _check_file(path, max_bytes=2**62)
    with open(path, "rb") as f:
        n = _safetensors_header_len(f.read(9))
        if n is None or 8 + n > size:
            raise CheckpointError(f"not a safetensors file or its header is damaged: {path.name}")
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"damaged safetensors header in {path.name}: {e}") from e
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                    metadata: dict[str, str] | None = None, *,
                    before_rename: Optional[Callable[[Path], None]] = None) -> Path:
    """Write tensors to ``path`` as safetensors, atomically (readers see the old file or the new one).

    The tensors go to a temporary file beside ``path``, which is fsynced and renamed over ``path``;
    the directory is fsynced after the rename.

    Args:
        state: name -> tensor. Tensors are moved to CPU; tensors sharing storage are copied.
        path: destination file (parent directories are created).
        metadata: optional string -> string header metadata.
        before_rename: called with ``path`` just before the rename (a test hook for interrupted writes).
    Returns:
        ``Path(path)``.
    """
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("save_state_dict: metadata must map str to str")
    tensors, seen = {}, set()
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise TypeError(f"save_state_dict: entry {k!r} is a {type(v).__name__}, expected str -> Tensor")
        t = v.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        tensors[k] = t.clone() if ptr in seen else t  # safetensors refuses shared storage
        if ptr is not None:
            seen.add(ptr)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe_state_diff(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    """One line saying how a state dict differs from what a model expects (a few examples of each)."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
    if wrong:
        parts.append(f"{len(wrong)} with other shapes (e.g. {'; '.join(wrong[:3])})")
    return ", ".join(parts)
