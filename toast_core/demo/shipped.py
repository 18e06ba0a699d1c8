"""Demo checkpoints that ship with the repository (``assets/checkpoints/<method>/``).

On a 2-core CPU there is not time enough to train all seven demo methods within the 15-minute budget of
``prepare-demo``, so the six parameter-efficient ones (linear, LoRA, VPT-shallow, VPT-deep, TOAST,
TOAST-Lite: a few MB in all) are trained once by ``prepare-demo --plan ship`` and committed, stored as
float16; full fine-tuning (86 MB, too large to ship) is trained on the user's machine.

A shipped checkpoint is used only when it was trained on exactly the user's default backbone (sha256 of
the converted weights) and demo task (sha256 of the task manifest) at the plan's input size; otherwise
``prepare-demo`` trains that method itself with the same recipe. Shipped files are read with
``safetensors`` only (no code runs) and installed into the demo directory with the task path rewritten
to the user's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

#: where the repository keeps them (present in a clone / editable install; absent from a bare wheel)
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "assets" / "checkpoints"
SHIP_DTYPE = torch.float16


def shipped_dir() -> Path:
    """``$TOAST_SHIPPED_DIR`` when set (tests), else :data:`SHIPPED_DIR`."""
    return Path(os.environ.get("TOAST_SHIPPED_DIR") or SHIPPED_DIR)


def shipped_checkpoint(method: str) -> Optional[Path]:
    """The shipped checkpoint directory of ``method``, or None when there is none."""
    d = shipped_dir() / method
    return d if (d / "model.safetensors").is_file() else None


def mismatch(cfg: dict, backbone_sha256: str, manifest_sha256: str, image_size: int) -> Optional[str]:
    """Why a shipped checkpoint (its config ``cfg``) does not fit this machine's demo; None when it fits."""
    if not cfg.get("complete"):
        return "it is not a finished checkpoint"
    got = (cfg.get("backbone_weights") or {}).get("sha256")
    if got != backbone_sha256:
        return f"it was trained on other backbone weights (sha256 {str(got)[:12]} vs local {backbone_sha256[:12]})"
    data = cfg.get("data") or {}
    if data.get("manifest_sha256") != manifest_sha256:
        return "it was trained on another version of the demo task (manifest hash differs)"
    if int(data.get("image_size", -1)) != int(image_size):
        return f"it was trained at {data.get('image_size')} px, the plan uses {image_size} px"
    return None


def _read(src: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    from ..io.checkpoints import read_checkpoint_info

    cfg = read_checkpoint_info(src)
    cfg.pop("path", None), cfg.pop("file_size", None)
    return load_file(str(Path(src) / "model.safetensors")), cfg


def _write(tensors: dict[str, torch.Tensor], cfg: dict, dst: Path) -> Path:
    from ..io.checkpoints import write_checkpoint_files

    return write_checkpoint_files(tensors, cfg, Path(dst))


def install(src: Path, dst: Path, task_dir: str | os.PathLike, source_label: str) -> dict:
    """Copy a shipped checkpoint into ``dst`` with the dataset path set to ``task_dir``.

    Returns: the installed config.
    """
    tensors, cfg = _read(Path(src))
    cfg.setdefault("data", {})["dataset"] = str(task_dir)
    cfg["installed_from"] = source_label
    _write(tensors, cfg, Path(dst))
    return cfg


def export_for_shipping(run_dir: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype = SHIP_DTYPE) -> Path:
    """Write a trained demo checkpoint as a shippable one: float tensors cast to ``dtype``, the
    machine-specific dataset path dropped. Returns the weights file."""
    tensors, cfg = _read(Path(run_dir))
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    cfg.setdefault("data", {})["dataset"] = None
    cfg["shipped_dtype"] = str(dtype).replace("torch.", "")
    return _write(tensors, cfg, Path(dst))


# ------------------------------------------------------------------------------------------------
# TOAST's stage 1 (the least-squares top-down module), shipped beside the checkpoints
# ------------------------------------------------------------------------------------------------

#: ``assets/toast_stage1/``: the stage-1 checkpoint fitted by ``prepare-demo`` (float16, ~7 MB)
STAGE1_DIR = SHIPPED_DIR.parent / "toast_stage1"


def shipped_stage1() -> Optional[Path]:
    """The shipped stage-1 directory (``$TOAST_SHIPPED_DIR/../toast_stage1`` when that is set), or None."""
    d = shipped_dir().parent / "toast_stage1" if os.environ.get("TOAST_SHIPPED_DIR") else STAGE1_DIR
    return d if (d / "model.safetensors").is_file() else None


def stage1_mismatch(cfg: dict, settings: dict, backbone_sha256: str) -> Optional[str]:
    """Why a shipped stage-1 checkpoint (config ``cfg``) does not fit; None when it was fitted with
    ``settings`` (a :class:`toast_core.training.pretune.Stage1Config` as a dict) on these backbone weights."""
    if not cfg.get("complete") or cfg.get("stage") != "pretune":
        return "it is not a finished stage-1 checkpoint"
    got = (cfg.get("backbone_weights") or {}).get("sha256")
    if got != backbone_sha256:
        return f"it was fitted on other backbone weights (sha256 {str(got)[:12]} vs local {backbone_sha256[:12]})"
    if ((cfg.get("stage1") or {}).get("settings") or {}) != settings:
        return "it was fitted with other stage-1 settings"
    return None


def shipped_stage1_fits(settings, backbone_sha256: str) -> bool:
    """Whether the shipped stage-1 checkpoint can stand in for fitting ``settings`` here."""
    from ..io.checkpoints import read_checkpoint_info

    src = shipped_stage1()
    return src is not None and stage1_mismatch(read_checkpoint_info(src), settings.to_dict(), backbone_sha256) is None


def install_stage1(dst: Path, meta: Optional[dict] = None) -> dict:
    """Copy the shipped stage-1 checkpoint into ``dst`` (float32 again), adding ``meta``."""
    tensors, cfg = _read(shipped_stage1())
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    cfg.update(meta or {}, installed_from="assets/toast_stage1")
    _write(tensors, cfg, Path(dst))
    return cfg
