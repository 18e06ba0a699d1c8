"""Model entries: a loaded model plus what the pages show about it (tiny random models, checkpoints)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import InputError

#: Tiny random models for tests and for a first look before any checkpoint exists (8x8 patch grid).
TINY_SPEC: dict = dict(backbone="vit_tiny_patch16_224", img_size=64, num_classes=10,
                       backbone_kwargs=dict(patch_size=8, depth=4, embed_dim=48, num_heads=3))


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
        """Models with a bottom-up and a top-down pass (they accept ``td_scale`` and ``xi``): the method's
        ``has_top_down`` capability."""
        return bool(self.model.has_top_down)

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
