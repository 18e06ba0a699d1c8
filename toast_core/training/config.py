"""What a run is asked to do (:class:`TrainConfig`), what it returns (:class:`TrainResult`), and how it fails."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from torch import nn

from ..errors import InputError, ToastError

class TrainingError(ToastError):
    """Training could not go on (bad configuration, nothing to train, incompatible saved state)."""


class NonFiniteLossError(TrainingError):
    """The loss or the gradients became NaN or infinite; the last good checkpoint was kept."""


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (recorded in the checkpoint).

    Attributes:
        epochs: passes over the training set.
        batch_size: images per step and process.
        lr: peak learning rate (after warm-up).
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum ``momentum``, Nesterov off).
        weight_decay: applied to matrices; biases, norms and 1-D parameters (ξ) get none.
        head_lr_scale: the classifier head's learning rate = ``lr * head_lr_scale`` (useful for full
            fine-tuning, where the backbone wants a much lower rate than a fresh head).
        lr_scales: ``((pattern, scale), ...)``: parameters whose name starts with the pattern or matches
            it as a glob (first match) train at ``lr * scale``, e.g. ``(("decoders.*.linear.*", 1e-3),)``
            for TOAST's chained A_l. The head keeps ``head_lr_scale``.
        relative_lr: patterns (as in ``lr_scales``) whose parameters' rate is also multiplied by the
            parameter's RMS when training starts, so Adam changes them by the same fraction per step
            whatever their scale (TOAST's B_l, RMS 0.3–4 after stage 1: ``("decoders.*.linear2.*",)``).
        warmup_epochs: linear warm-up length (fractions allowed), then cosine decay to ``min_lr_ratio * lr``.
        label_smoothing: of the cross-entropy.
        grad_clip: max global gradient norm (0 = off).
        amp: ``"auto"`` (bf16 autocast on CUDA, off on CPU), ``"bf16"`` or ``"off"``.
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        seed: seeds Python, NumPy and torch; the data order of epoch e depends only on (seed, e).
        num_workers: DataLoader workers.
        eval_batch_size: 0 = 2 × batch_size.
        save_every_steps: also write the training state every N steps (0 = per epoch only).
        cache_features: train head-only models on cached backbone features (one backbone pass).
        cache_first_pass: memoise a frozen first pass per training image (TOAST's bottom-up pass,
            :mod:`toast_core.training.first_pass`; single process on a CPU, where that pass is about a fifth of
            a step): once an image has been seen, its steps run only the top-down pass.
        stage: ``"tune"`` or ``"pretune"`` (TOAST stage 1: adds the reconstruction loss).
        max_steps_per_epoch: cap on steps per epoch (0 = the whole training set).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    head_lr_scale: float = 1.0
    lr_scales: tuple = ()
    relative_lr: tuple = ()
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    amp: str = "auto"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    eval_batch_size: int = 0
    save_every_steps: int = 0
    cache_features: bool = True
    cache_first_pass: bool = True
    stage: str = "tune"
    max_steps_per_epoch: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(f"epochs and batch_size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be a positive number, got {self.lr}")
        if self.optimizer not in ("adamw", "sgd"):
            raise InputError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise InputError(f"amp must be 'auto', 'bf16' or 'off', got {self.amp!r}")
        if self.stage not in ("tune", "pretune"):
            raise InputError(f"stage must be 'tune' or 'pretune', got {self.stage!r}")
        if self.warmup_epochs < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise InputError("warmup_epochs, weight_decay and grad_clip must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def signature(self) -> dict:
        """The fields that change the result (device, workers and saving cadence do not)."""
        d = self.to_dict()
        for k in ("device", "num_workers", "eval_batch_size", "save_every_steps"):
            d.pop(k)
        if not d["relative_lr"]:  # added later: runs without it keep their signature
            d.pop("relative_lr")
        d.pop("cache_first_pass")  # the same result either way
        return d


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (on the training device, unwrapped).
        history: one dict per epoch (epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds).
        val: metrics of the last evaluation on the validation split ({} without one).
        test: metrics on the test split ({} without one).
        checkpoint: the weights file written (rank 0 with ``out_dir``), else None.
        seconds: wall time of this call.
        steps: optimizer steps done in total.
        stopped: a callback stopped the run early.
    """

    model: nn.Module
    history: list = field(default_factory=list)
    val: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    checkpoint: Optional[Path] = None
    seconds: float = 0.0
    steps: int = 0
    stopped: bool = False
