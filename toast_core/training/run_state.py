"""Where a run stands (epoch, step, history, time) and what it writes: the checkpoint after every epoch
and the training state that ``train(..., resume=True)`` continues from. One object, passed to the
trainer's steps, instead of loop variables closed over.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..io import checkpoints as ckpt
from .config import TrainConfig, TrainingError, TrainResult

def _dataset_signature(data) -> dict:
    if data is None:
        return {}
    sig = {"n": len(data)}
    for attr in ("root", "split", "image_size", "manifest_sha256"):
        value = getattr(data, attr, None)
        if value is not None:
            sig[attr] = str(value)
    return sig


def run_signature(model, cfg: TrainConfig, train_data, val_data, extra: Optional[dict] = None) -> str:
    """Hash of what determines a run: the model's build info and backbone weights, the config, the
    datasets and ``extra`` (e.g. where a pre-tuned initialisation came from)."""
    from ..io.checkpoints import backbone_record

    payload = {"build": getattr(model, "build_info", {}), "train": cfg.signature(),
               "data": {"train": _dataset_signature(train_data), "val": _dataset_signature(val_data)},
               "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
               "backbone": backbone_record(model) if getattr(model, "build_info", None) else None,
               "extra": extra or {}}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]



@dataclass
class RunState:
    """One run's position and its files.

    Attributes:
        model, optimizer, cfg: what trains and how.
        signature: :func:`run_signature` of the run (a saved state must carry the same).
        weights_path, state_path: the checkpoint and the training state (None: nothing on disk).
        writes: this process writes files (rank 0 with an output directory).
        meta: extra checkpoint config fields.
        epoch, step_in_epoch, global_step: where the run is (epochs and steps done).
        history: one dict per finished epoch.
        seconds_before: training time of earlier calls (a resumed run); start: this call's start.
        result: the :class:`TrainResult` being filled in.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    signature: str
    weights_path: Optional[Path] = None
    state_path: Optional[Path] = None
    writes: bool = False
    meta: dict = field(default_factory=dict)
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)
    seconds_before: float = 0.0
    start: float = field(default_factory=time.perf_counter)
    result: Optional[TrainResult] = None

    def elapsed(self) -> float:
        """Training seconds over every call of this run."""
        return round(self.seconds_before + time.perf_counter() - self.start, 2)

    def restore(self, resume: bool | str, say) -> bool:
        """Continue from ``state_path`` when ``resume`` asks and the saved state belongs to this run.

        ``resume=True``: a state from another run raises :class:`TrainingError`; ``"auto"``: it is
        discarded. Returns whether a state was restored; ``say(text)`` reports what happened.
        """
        path = self.state_path
        if not resume or path is None or not path.is_file():
            return False
        saved_sig = ckpt.read_training_state(path)[1]["progress"].get("signature")
        if saved_sig != self.signature and resume == "auto":
            say(f"discarding {path}: it belongs to another run")
            if self.writes:
                path.unlink(missing_ok=True)
            return False
        if saved_sig != self.signature:
            raise TrainingError(
                f"the training state in {path} belongs to another run (signature {saved_sig}, this run "
                f"{self.signature}: model, config or data differ). Use another --out directory, or start afresh "
                "without resume.")
        prog = ckpt.restore_training_state(path, self.model, self.optimizer)
        self.epoch, self.step_in_epoch, self.global_step = prog["epoch"], prog["step_in_epoch"], prog["global_step"]
        self.history, self.seconds_before = prog.get("history", []), float(prog.get("seconds", 0.0))
        say(f"resumed from {path} at epoch {self.epoch + 1}, step {self.global_step}")
        return True

    def save_checkpoint(self, complete: bool, extra: Optional[dict] = None, state: bool = True) -> None:
        """Write the weights and their config (metrics, history, progress); then the training state."""
        if not self.writes:
            return
        result, summary = self.result, {}
        if result.val:
            summary.update(val_accuracy=result.val["accuracy"], val_loss=result.val["loss"])
        if result.test:
            summary.update(test_accuracy=result.test["accuracy"], test_loss=result.test["loss"])
        info = {"stage": self.cfg.stage, "metrics": summary, "train": self.cfg.to_dict(), "run_hash": self.signature,
                "history": self.history, "epochs_done": self.epoch, "global_step": self.global_step,
                "complete": complete, "train_seconds": self.elapsed(), **self.meta, **(extra or {})}
        result.checkpoint = ckpt.save_checkpoint(self.model, self.weights_path, info)
        if state:
            self.save_training_state()

    def save_training_state(self) -> None:
        """Write the optimizer state and the position, so an interrupted run resumes here."""
        if not self.writes:
            return
        ckpt.save_training_state(self.state_path, self.model, self.optimizer,
                                 {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                                  "global_step": self.global_step, "history": self.history,
                                  "signature": self.signature, "seconds": self.elapsed()})


def open_run(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, train_data, val_data,
             out_dir: Optional[str | os.PathLike], checkpoint_name: Optional[str], meta: Optional[dict],
             is_main: bool, start: float) -> RunState:
    """The run's state before its first step: signature, file paths (the directory made, stale
    temporaries removed, on rank 0)."""
    meta = meta or {}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temporaries(out)
    signature = run_signature(model, cfg, train_data, val_data,
                              {k: meta.get(k) for k in ("pretuned_from", "demo_hash") if k in meta})
    return RunState(model, optimizer, cfg, signature,
                    weights_path=(out / (checkpoint_name or ckpt.WEIGHTS_NAME)) if out is not None else None,
                    state_path=out / ckpt.STATE_NAME if out is not None else None,
                    writes=out is not None and is_main, meta=dict(meta), start=start)
