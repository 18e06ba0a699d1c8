"""This project's checkpoints: safetensors weights plus a JSON config, written atomically.

A checkpoint is one safetensors file whose header metadata holds the whole config (so the weights and
their description can never disagree), plus a readable copy of that config beside it::

    DIR/model.safetensors   weights (+ header metadata "toast_core": the config JSON)
    DIR/config.json         the same config, pretty-printed (for people and the app's Models page)

(or ``NAME.safetensors`` + ``NAME.json`` when a file path is given).

What is saved: for a frozen-backbone method whose backbone weights can be rebuilt exactly (the offline
default, a local weights file, timm's pretrained weights), only the parameters the method adds or
trains (head, adapters, prompts, TOAST's feedback path) — kilobytes to a few megabytes. The backbone is
rebuilt from the config and its weights are checked against the sha256 recorded at save time. Full
fine-tuning, and any model built on random backbone weights, saves every tensor.

A training-state file (``last.safetensors``: trainable parameters, optimizer state, RNG states, epoch
and step) lets :func:`toast_core.training.trainer.train` resume an interrupted run.

Writes go to a temporary file that is renamed over the target (``os.replace``), so a reader, or a
run killed mid-write, sees the previous file or the new one, never a torn one (tests kill a run between
the two through the :data:`before_rename` seam).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from ..cache import atomic_write_bytes, sha256_file
from ..errors import CheckpointError
from .jsonable import json_default
from .safe_io import describe_state_diff, load_state_dict, read_safetensors_metadata, save_state_dict

FORMAT = "toast-core-checkpoint"
STATE_FORMAT = "toast-core-training-state"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
STATE_NAME = "last.safetensors"
META_KEY = "toast_core"
MAX_CHECKPOINT_BYTES = 4 * 2**30

#: Called with the destination just before every checkpoint write renames its temporary file into place
#: (None: nothing). A seam for tests that interrupt a write on purpose (``tests/pause_writes.py``); the
#: library never sets it.
before_rename: Optional[Callable[[Path], None]] = None


# ------------------------------------------------------------------------------------------------
# Atomic safetensors writing
# ------------------------------------------------------------------------------------------------

def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                            metadata: Optional[dict[str, str]] = None) -> Path:
    """Write ``tensors`` as safetensors to ``path`` atomically (temporary file, fsync, rename).

    :func:`toast_core.io.safe_io.save_state_dict` calling :data:`before_rename` (when set) before the
    rename, so a test can interrupt any checkpoint write on purpose.
    """
    return save_state_dict(tensors, path, metadata, before_rename=before_rename)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by writers that were killed (their process no longer exists)."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.glob(".*.tmp-*"):
        try:
            pid = int(p.name.rsplit(".tmp-", 1)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------------
# What a checkpoint holds
# ------------------------------------------------------------------------------------------------

def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights file, config JSON) for a checkpoint directory, weights file or JSON file."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return p, (p.parent / CONFIG_NAME if p.name == WEIGHTS_NAME else p.with_suffix(".json"))
    if p.suffix == ".json":
        return (p.parent / WEIGHTS_NAME if p.name == CONFIG_NAME else p.with_suffix(".safetensors")), p
    return p / WEIGHTS_NAME, p / CONFIG_NAME


def _backbone_source(model) -> Any:
    return getattr(model, "build_info", {}).get("pretrained")


def saves_full_state(model) -> bool:
    """True when the checkpoint must hold every tensor: the backbone trains, or its weights cannot be
    rebuilt from a known source (random initialisation, unknown origin)."""
    source = _backbone_source(model)
    frozen = getattr(model, "backbone_frozen", True)
    if not frozen:
        return True
    return not (source is True or isinstance(source, str))


def checkpoint_state(model, full: Optional[bool] = None) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint of ``model`` holds.

    Partial (frozen backbone): every tensor outside ``model.vit`` (prompts, decoders, ξ, P — trained or
    pre-tuned) plus the trainable tensors inside it (head, LoRA adapters). Full: the whole state dict.
    """
    full = saves_full_state(model) if full is None else full
    state = model.state_dict()
    if full:
        return dict(state)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if not k.startswith("vit.") or k in trainable}


def state_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


_file_hashes: dict[tuple, str] = {}


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _file_hashes:
        _file_hashes[key] = sha256_file(path)
    return _file_hashes[key]


def backbone_record(model) -> dict:
    """Where the backbone weights came from, with the hash that a later load must match."""
    from ..backbones import DEFAULT_BACKBONE

    info = getattr(model, "build_info", {})
    source = info.get("pretrained")
    if source is True and info.get("backbone") == DEFAULT_BACKBONE:
        from ..default_backbone import default_backbone_sha256, ensure_default_backbone

        path = ensure_default_backbone()
        return {"source": "default", "file": path.name, "sha256": default_backbone_sha256()}
    if source is True:
        vit_state = {k: v for k, v in model.vit.state_dict().items() if not k.startswith("head.")}
        if not getattr(model, "backbone_frozen", True):
            return {"source": "timm"}  # weights are saved in full, nothing to verify
        return {"source": "timm", "state_sha256": _frozen_backbone_digest(model, vit_state)}
    if isinstance(source, str):
        path = Path(source).expanduser().resolve()
        rec = {"source": "file", "path": str(path)}
        if path.is_file():
            rec["sha256"] = _cached_sha256(path)
        return rec
    return {"source": "random" if source is False else "unknown"}


def _frozen_backbone_digest(model, vit_state) -> str:
    cached = getattr(model, "_toast_backbone_digest", None)
    if cached is None:
        cached = state_digest(vit_state)
        try:
            object.__setattr__(model, "_toast_backbone_digest", cached)
        except AttributeError:
            pass
    return cached


def library_versions() -> dict[str, str]:
    import platform

    import timm

    from .. import __version__

    out = {"toast_core": __version__, "torch": torch.__version__, "timm": timm.__version__,
           "python": platform.python_version()}
    try:
        import safetensors
        out["safetensors"] = safetensors.__version__
    except (ImportError, AttributeError):
        pass
    return out


def build_config(model, meta: Optional[dict] = None, full: Optional[bool] = None) -> dict:
    """The JSON config of a checkpoint of ``model``: how to rebuild it plus ``meta`` (classes, data,
    training config, metrics...)."""
    info = dict(getattr(model, "build_info", {}) or {})
    if not info:
        raise CheckpointError("the model has no build_info: build it with toast_core.build_model()")
    full = saves_full_state(model) if full is None else full
    counts = model.parameter_counts()
    cfg = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "method": info["method"], "backbone": info["backbone"], "num_classes": int(info["num_classes"]),
        "img_size": info.get("img_size"), "backbone_kwargs": info.get("backbone_kwargs", {}),
        "config": info.get("config", {}),
        "backbone_weights": backbone_record(model),
        "saved": "full" if full else "partial",
        "parameters": {"trainable": counts["trainable"], "total": counts["total"], "share": counts["share"]},
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for k, v in (meta or {}).items():
        if k in ("format", "format_version", "method", "backbone", "num_classes", "saved"):
            raise CheckpointError(f"meta may not override '{k}'")
        cfg[k] = v
    return json.loads(json.dumps(cfg, default=json_default))


def save_checkpoint(model, path: str | os.PathLike, meta: Optional[dict] = None) -> Path:
    """Save ``model`` (a :class:`TransferModel` from ``build_model``) as this project's checkpoint.

    Args:
        model: the model (unwrapped from DDP).
        path: a directory (``model.safetensors`` + ``config.json`` inside) or a ``.safetensors`` file.
        meta: extra JSON-ready fields stored in the config, e.g. ``classes``, ``data``, ``train``,
            ``metrics``.
    Returns:
        Path of the weights file.
    """
    weights, config_json = checkpoint_paths(path)
    full = saves_full_state(model)
    cfg = build_config(model, meta, full)
    tensors = checkpoint_state(model, full)
    cfg["saved_tensors"] = {"count": len(tensors), "numel": int(sum(t.numel() for t in tensors.values()))}
    return write_checkpoint_files(tensors, cfg, path)


def write_checkpoint_files(tensors: Mapping[str, torch.Tensor], cfg: dict, path: str | os.PathLike) -> Path:
    """Write ``tensors`` with ``cfg`` in the header and beside them as ``config.json``, atomically.
    Returns the weights file."""
    weights, config_json = checkpoint_paths(path)
    text = json.dumps(cfg, indent=1, sort_keys=True)
    atomic_save_safetensors(tensors, weights, metadata={META_KEY: text})
    atomic_write_bytes(config_json, (text + "\n").encode())
    return weights


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------

def read_checkpoint_info(path: str | os.PathLike) -> dict:
    """The config of a checkpoint without loading its weights (for listings such as the Models page).

    The weights file's own header is authoritative; the JSON beside it is used when the weights file
    is missing. Adds ``path`` (weights file) and ``file_size`` (bytes, or None).

    Raises:
        CheckpointError: no checkpoint there, or not one of this project's.
    """
    weights, config_json = checkpoint_paths(path)
    if weights.is_file():
        meta = read_safetensors_metadata(weights)
        if META_KEY not in meta:
            raise CheckpointError(f"{weights} is a safetensors file but not a toast_core checkpoint "
                                  "(no toast_core config in its header); load it as a backbone instead")
        try:
            cfg = json.loads(meta[META_KEY])
        except ValueError as e:
            raise CheckpointError(f"{weights}: damaged config in the header ({e})") from e
        size = weights.stat().st_size
    elif config_json.is_file():
        try:
            cfg = json.loads(config_json.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {config_json}: {e}") from e
        size = None
    else:
        raise CheckpointError(f"no checkpoint at {path} (looked for {weights.name} and {config_json.name})")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
    if int(cfg.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer toast_core (format {cfg['format_version']}); upgrade")
    cfg["path"], cfg["file_size"] = str(weights), size
    return cfg


def _as_size(value):
    return tuple(value) if isinstance(value, list) else value


def _verify_backbone(cfg: dict, model) -> None:
    """Compare the backbone weights now available with the hash recorded at save time."""
    rec = cfg.get("backbone_weights") or {}
    source = rec.get("source")
    if source == "default" and rec.get("sha256"):
        from ..default_backbone import default_backbone_sha256, ensure_default_backbone

        now = default_backbone_sha256()
        if now != rec["sha256"]:
            raise CheckpointError(
                f"backbone weights differ: the checkpoint was trained on the default backbone with sha256 "
                f"{rec['sha256'][:16]}…, but {ensure_default_backbone()} has sha256 {now[:16]}…. Its head and "
                "adapters would not fit; retrain, or restore the weights it was trained with.")
    elif source == "timm" and rec.get("state_sha256"):
        vit_state = {k: v for k, v in model.vit.state_dict().items() if not k.startswith("head.")}
        now = state_digest(vit_state)
        if now != rec["state_sha256"]:
            raise CheckpointError(
                f"backbone weights differ: timm's pretrained '{cfg['backbone']}' weights available now have "
                f"digest {now[:16]}…, the checkpoint was trained on {rec['state_sha256'][:16]}…")


def _pretrained_arg(cfg: dict):
    if cfg.get("saved") == "full":
        return False
    rec = cfg.get("backbone_weights") or {}
    source = rec.get("source")
    if source in ("default", "timm"):
        return True
    if source == "file":
        path = Path(rec.get("path", ""))
        if not path.is_file():
            raise CheckpointError(f"the checkpoint needs its backbone weights file {path}, which is not there")
        if rec.get("sha256") and _cached_sha256(path) != rec["sha256"]:
            raise CheckpointError(
                f"backbone weights differ: {path} has sha256 {_cached_sha256(path)[:16]}…, the checkpoint was "
                f"trained on a file with sha256 {rec['sha256'][:16]}…")
        return str(path)
    raise CheckpointError(f"the checkpoint holds only the trained parts but records no usable backbone "
                          f"source ({source!r}); it cannot be rebuilt")


def load_tensors_strict(model, tensors: Mapping[str, torch.Tensor], full: bool, source: str = "checkpoint") -> None:
    """Load ``tensors`` into ``model``: the keys must be exactly those a checkpoint of it holds, with
    the same shapes, else :class:`CheckpointError` says what differs."""
    expected = checkpoint_state(model, full)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in sorted(set(tensors) & set(expected)) if tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        hint = ""
        if any(w.startswith("vit.head.") for w in wrong):
            hint = " The classifier head has another size: the checkpoint is for another number of classes."
        raise CheckpointError(f"{source} does not fit the model: {describe_state_diff(missing, unexpected, wrong)}.{hint}")
    model.load_state_dict(dict(tensors), strict=False)


def build_without_init(method: str, *, pretrained: Any = True, backbone_kwargs: Optional[dict] = None, **kwargs):
    """``build_model`` that skips timm's random initialisation of the backbone when pretrained weights
    replace it anyway (several seconds for a ViT-S on a small CPU). The fresh classifier head then
    has PyTorch's default ``nn.Linear`` initialisation; method modules initialise themselves as usual.
    ``build_info`` is the same as ``build_model``'s."""
    from ..models import build_model

    plain = dict(backbone_kwargs or {})
    if pretrained is False or "weight_init" in plain:
        return build_model(method, pretrained=pretrained, backbone_kwargs=plain or None, **kwargs)
    try:
        model = build_model(method, pretrained=pretrained, backbone_kwargs={"weight_init": "skip", **plain}, **kwargs)
    except CheckpointError as e:
        if "attention layer" not in str(e):
            raise
        return build_model(method, pretrained=pretrained, backbone_kwargs=plain or None, **kwargs)
    model.build_info["backbone_kwargs"] = plain
    return model


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", verify_backbone: bool = True):
    """Rebuild a trained model from this project's checkpoint.

    The backbone is rebuilt from the config (the offline default via ``pretrained=True``), its weights
    are checked against the recorded sha256, and the saved tensors are loaded strictly.

    Args:
        path: checkpoint directory, weights file or config JSON.
        device: where the model goes.
        verify_backbone: check the backbone weights' hash (leave on).
    Returns:
        the :class:`TransferModel` in eval mode, with ``model.checkpoint_info`` = the config.
    Raises:
        CheckpointError: missing/unreadable file, other backbone weights, keys or shapes that differ.
    """
    from ..models import build_model
    cfg = read_checkpoint_info(path)
    pretrained = _pretrained_arg(cfg)
    kwargs = dict(cfg.get("backbone_kwargs") or {})

    def build(backbone_kwargs):
        return build_model(cfg["method"], backbone=cfg["backbone"], num_classes=int(cfg["num_classes"]),
                           pretrained=pretrained, img_size=_as_size(cfg.get("img_size")),
                           backbone_kwargs=backbone_kwargs or None, **(cfg.get("config") or {}))

    try:
        try:
            # Every tensor is overwritten (saved tensors + pretrained backbone): skip timm's random init.
            model = build({"weight_init": "skip", **kwargs})
        except CheckpointError:
            model = build(kwargs)
        model.build_info["backbone_kwargs"] = kwargs
    except (ValueError, TypeError, RuntimeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"cannot rebuild the model recorded in {cfg['path']}: {e}") from e
    if verify_backbone and cfg.get("saved") != "full":
        _verify_backbone(cfg, model)
    tensors = load_state_dict(cfg["path"], max_bytes=MAX_CHECKPOINT_BYTES)
    load_tensors_strict(model, tensors, full=cfg.get("saved") == "full", source=Path(cfg["path"]).name)
    model.checkpoint_info = cfg
    return model.to(device).eval()


_COMPARED = ("method", "backbone", "num_classes", "backbone_kwargs", "config")


def load_checkpoint_into(model, path: str | os.PathLike) -> dict:
    """Load a checkpoint into an existing model built by ``build_model``, refusing one made for another
    method, backbone or number of classes (the message lists every difference).

    Returns:
        the checkpoint's config.
    """
    cfg = read_checkpoint_info(path)
    info = getattr(model, "build_info", {})
    diffs = []
    for key in _COMPARED:
        mine, theirs = info.get(key), cfg.get(key)
        if key == "config":
            theirs = {k: v for k, v in (theirs or {}).items()}
            mine = json.loads(json.dumps(mine or {}))
        if key == "backbone_kwargs":
            mine, theirs = json.loads(json.dumps(mine or {})), theirs or {}
        if mine != theirs:
            diffs.append(f"{key}: checkpoint {theirs!r}, model {mine!r}")
    if diffs:
        raise CheckpointError("checkpoint does not fit the model — " + "; ".join(diffs))
    full = cfg.get("saved") == "full"
    if not full:
        _verify_backbone(cfg, model)
        mine_rec = backbone_record(model)
        theirs_rec = cfg.get("backbone_weights") or {}
        for key in ("sha256", "state_sha256"):
            if mine_rec.get(key) and theirs_rec.get(key) and mine_rec[key] != theirs_rec[key]:
                raise CheckpointError(f"backbone weights differ: checkpoint {theirs_rec[key][:16]}…, "
                                      f"model {mine_rec[key][:16]}…")
        if mine_rec.get("source") in ("random", "unknown"):
            raise CheckpointError("the checkpoint holds only the trained parts, but the model's backbone has "
                                  "random weights: build it with the pretrained weights the checkpoint records "
                                  f"({theirs_rec.get('source')})")
    tensors = load_state_dict(cfg["path"], max_bytes=MAX_CHECKPOINT_BYTES)
    load_tensors_strict(model, tensors, full=full, source=Path(cfg["path"]).name)
    return cfg


def is_complete_checkpoint(path: str | os.PathLike, run_hash: Optional[str] = None) -> bool:
    """True when a readable, finished checkpoint is there (with ``run_hash`` when given)."""
    try:
        cfg = read_checkpoint_info(path)
    except CheckpointError:
        return False
    if not cfg.get("complete"):
        return False
    return run_hash is None or cfg.get("run_hash") == run_hash


# ------------------------------------------------------------------------------------------------
# Training state (resume)
# ------------------------------------------------------------------------------------------------

def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}
    return tensors, meta


def _set_rng_state(tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_training_state(path: str | os.PathLike, model, optimizer: torch.optim.Optimizer, progress: dict) -> Path:
    """Write everything needed to resume: trainable parameters, optimizer state, RNG states and
    ``progress`` (epoch, step, history, run signature: JSON-ready)."""
    tensors = {f"model.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    opt = optimizer.state_dict()
    scalars = {}
    for idx, st in opt["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    rng_tensors, rng_meta = _rng_state()
    tensors.update(rng_tensors)
    meta = {"format": STATE_FORMAT, "format_version": FORMAT_VERSION, "progress": progress,
            "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars,
                          "state_ids": sorted(int(i) for i in opt["state"])},
            "rng": rng_meta}
    text = json.dumps(meta, default=json_default)
    return atomic_save_safetensors(tensors, path, metadata={META_KEY: text})


def read_training_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a training-state file, read safely."""
    meta = read_safetensors_metadata(path)
    try:
        info = json.loads(meta[META_KEY])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path} is not a toast_core training state") from e
    if info.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a toast_core training state")
    return load_state_dict(path, max_bytes=MAX_CHECKPOINT_BYTES), info


def restore_training_state(path: str | os.PathLike, model, optimizer: torch.optim.Optimizer,
                           restore_rng: bool = True) -> dict:
    """Load a training state written by :func:`save_training_state` into ``model`` and ``optimizer``.

    Returns:
        the saved ``progress`` dict.
    Raises:
        CheckpointError: the parameters or optimizer do not match the saved state.
    """
    tensors, info = read_training_state(path)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    wrong = [f"{k}: file {tuple(saved[k].shape)} vs model {tuple(params[k].shape)}"
             for k in sorted(set(saved) & set(params)) if saved[k].shape != params[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"training state {path} does not fit the model: {describe_state_diff(missing, unexpected, wrong)}")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(saved[k].to(p.device, p.dtype))
    opt_meta = info["optimizer"]
    state: dict[int, dict] = {i: {} for i in opt_meta["state_ids"]}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for k, v in opt_meta["scalars"].items():
        idx, name = k.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    try:
        optimizer.load_state_dict({"state": state, "param_groups": opt_meta["param_groups"]})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state in {path} does not fit: {e}") from e
    if restore_rng:
        _set_rng_state(tensors, info["rng"])
    return info["progress"]
