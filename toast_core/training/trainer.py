"""One trainer for every transfer method.

What differs between methods lives in the methods: the trainer calls
``model.training_outputs(images, stage)`` → ``(logits, {name: extra_loss})`` and optimises the
parameters that require grad. Everything else is shared:

* SGD (momentum) or AdamW, linear warm-up then cosine decay, set per step;
* bf16 autocast and CUDA when present (CPU otherwise), seeds, gradient clipping;
* evaluation each epoch (accuracy, loss) on a validation split, optional test split at the end;
* progress through callbacks (for the app) and a tqdm bar (for the command line);
* after every epoch (and every ``save_every_steps`` steps) an atomic checkpoint
  (:mod:`toast_core.io.checkpoints`) and a training-state file, so ``train(..., resume=True)`` continues an
  interrupted run exactly where the last state was written;
* a NaN/inf loss or gradient stops the run with :class:`NonFiniteLossError`; the last good checkpoint
  stays;
* several processes under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU); only rank 0 writes;
* head-only models (a linear probe) train on cached backbone features: one backbone pass per image.

Callbacks are objects with any of ``on_step(step, total, loss, lr)``, ``on_epoch(epoch, metrics)``,
``on_message(text)``, or plain functions called as ``fn(event_name, *args)``. A callback that returns
``False`` from ``on_step`` stops the run after that step (the state is saved, so it can resume).

Example::

    model = build_model("lora", num_classes=12)
    result = train(model, train_set, val_set, TrainConfig(epochs=5, lr=1e-3), out_dir="runs/lora")
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
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


# ------------------------------------------------------------------------------------------------
# Small pure helpers
# ------------------------------------------------------------------------------------------------

def lr_at(step: int, total: int, warmup: int, base: float, min_ratio: float = 0.0) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up over ``warmup`` steps, then
    cosine decay from ``base`` to ``base * min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_indices(n: int, epoch: int, seed: int, world: int = 1, rank: int = 0, shuffle: bool = True) -> list[int]:
    """This process's sample order for ``epoch``: a permutation seeded by (seed, epoch), padded to a
    multiple of ``world`` and dealt round-robin, so every process gets the same number of samples and
    ``world`` processes with batch b see the same samples per step as one process with batch world·b."""
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    if world > 1 and n % world:
        order += order[: world - n % world]
    return order[rank::world]


def resolve_device(spec: str = "auto", local_rank: Optional[int] = None) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA was asked for but no CUDA device is available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank or 0)
    return dev


def unpack_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) from a collated batch: a dict with ``image``/``label`` or a (x, y) pair."""
    if isinstance(batch, dict):
        return batch["image"], torch.as_tensor(batch["label"])
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise InputError("a training batch must be a dict with 'image' and 'label' or an (image, label) pair")


class _ListSampler(torch.utils.data.Sampler):
    def __init__(self, indices: Sequence[int]):
        self.indices = list(indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


# ------------------------------------------------------------------------------------------------
# Callbacks and progress
# ------------------------------------------------------------------------------------------------

class Events:
    """Dispatches trainer events to callbacks (objects with on_* methods, or functions)."""

    def __init__(self, callbacks: Iterable[Any] = (), enabled: bool = True):
        self.callbacks = list(callbacks or []) if enabled else []

    def emit(self, name: str, *args) -> bool:
        """Send an event; True if a callback asked to stop (returned False)."""
        stop = False
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None and callable(fn):
                result = fn(*args)
            elif callable(cb) and not hasattr(cb, "on_step"):
                result = cb(name, *args)
            else:
                continue
            stop = stop or result is False
        return stop


class TqdmProgress:
    """A tqdm bar over all steps, epoch summaries and messages printed above it."""

    def __init__(self, desc: str = "train"):
        self.desc, self.bar = desc, None

    def on_step(self, step, total, loss, lr):
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="step", dynamic_ncols=True, initial=step - 1)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)

    def on_epoch(self, epoch, metrics):
        text = f"{self.desc} epoch {epoch}: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k != "epoch")
        self.on_message(text)

    def on_message(self, text):
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ------------------------------------------------------------------------------------------------
# Distributed
# ------------------------------------------------------------------------------------------------

@dataclass
class DistContext:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float], device) -> list[float]:
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_flag(self, flag: bool, device) -> bool:
        return self.all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0


def init_distributed(device_spec: str) -> DistContext:
    """Join the process group set up by ``torchrun`` (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_spec != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    return DistContext(world=dist.get_world_size(), rank=dist.get_rank(), local_rank=local, owns_group=owns)


class _TrainStep(nn.Module):
    """Wraps ``training_outputs`` as ``forward`` so DDP sees (and synchronises) the call."""

    def __init__(self, model: nn.Module, stage: str, first_pass=None):
        super().__init__()
        self.model, self.stage, self.first_pass = model, stage, first_pass

    def forward(self, images):
        if self.first_pass is not None:
            return self.model.training_outputs(images, self.stage, first_pass=self.first_pass)
        return self.model.training_outputs(images, self.stage)


# ------------------------------------------------------------------------------------------------
# Optimizer
# ------------------------------------------------------------------------------------------------

def name_matches(name: str, pattern: str) -> bool:
    """A parameter name matches a prefix (``"prompt"``) or a glob (``"decoders.*.linear2.*"``)."""
    import fnmatch

    return name.startswith(pattern) or fnmatch.fnmatchcase(name, pattern)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Optimizer over the parameters that require grad, in up to four groups (decay / no decay ×
    head / rest); each group's ``lr_scale`` multiplies the scheduled rate."""
    head_ids = set()
    vit = getattr(model, "vit", None)
    if vit is not None and isinstance(getattr(vit, "head", None), nn.Module):
        head_ids = {id(p) for p in vit.head.parameters()}
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2
        if id(p) in head_ids:
            kind, scale = "head", cfg.head_lr_scale
        else:
            kind, scale = next(((pre, sc) for pre, sc in cfg.lr_scales if name_matches(name, pre)), ("body", 1.0))
        if any(name_matches(name, pre) for pre in cfg.relative_lr):
            # one group per parameter; a resumed run restores the saved groups' lr_scale
            kind, scale = name, scale * float(p.detach().float().pow(2).mean().sqrt())
        groups.setdefault((decay, kind, float(scale)), []).append(p)
    if not groups:
        raise TrainingError("the model has no trainable parameters (nothing requires grad)")
    param_groups = []
    for (decay, kind, scale), params in sorted(groups.items()):
        param_groups.append({"params": params, "weight_decay": cfg.weight_decay if decay else 0.0,
                             "lr_scale": scale, "group_name": kind + ("" if decay else "_no_decay")})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(0.9, 0.999))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------

def _autocast(device: torch.device, amp: bool):
    if not amp:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def evaluate(model: nn.Module, data, batch_size: int = 64, device: str | torch.device = "cpu",
             amp: bool = False, forward: Optional[Callable] = None, dist_ctx: Optional[DistContext] = None,
             num_workers: int = 0) -> dict:
    """Accuracy and mean cross-entropy of ``model`` on ``data`` (batched, under inference_mode).

    Args:
        data: a Dataset of dicts (``image``, ``label``) or (image, label) pairs.
        forward: replaces ``model(images)`` (e.g. a head on cached features).
        dist_ctx: under DDP, each process evaluates its share and the sums are combined.
    Returns:
        {"accuracy": float in [0, 1], "loss": float, "n": int}
    """
    device = torch.device(device)
    ctx = dist_ctx or DistContext()
    indices = list(range(ctx.rank, len(data), ctx.world))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=_ListSampler(indices),
                                         num_workers=num_workers, pin_memory=device.type == "cuda")
    fn = forward or model
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0.0, 0.0, 0.0
    try:
        with torch.inference_mode():
            for batch in loader:
                images, labels = unpack_batch(batch)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with _autocast(device, amp):
                    logits = fn(images)
                logits = logits.float()
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                correct += float((logits.argmax(-1) == labels).sum())
                n += labels.numel()
    finally:
        model.train(was_training)
    correct, loss_sum, n = ctx.all_reduce_sum([correct, loss_sum, n], device)
    return {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1), "n": int(n)}


# ------------------------------------------------------------------------------------------------
# Feature caching for head-only models
# ------------------------------------------------------------------------------------------------

def is_head_only(model: nn.Module) -> bool:
    """True when only ``model.vit.head`` trains and the forward is the plain single pass, so the
    features before the head are fixed and can be computed once."""
    from ..methods.base import TransferModel

    if not isinstance(model, TransferModel):
        return False
    cls = type(model)
    if cls.forward is not TransferModel.forward or cls.classify is not TransferModel.classify:
        return False
    if cls.training_outputs is not TransferModel.training_outputs:
        return False
    head = {id(p) for p in model.vit.head.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return bool(trainable) and all(id(p) in head for p in trainable)


class _FeatureSet(torch.utils.data.Dataset):
    def __init__(self, feats: torch.Tensor, labels: torch.Tensor):
        self.feats, self.labels = feats, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.feats[i], self.labels[i]


def compute_features(model, data, batch_size: int, device, amp: bool, num_workers: int = 0) -> _FeatureSet:
    """Pre-head features (B, C) of every item of ``data`` (one backbone pass, frozen, eval mode)."""
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, labels = [], []
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            images, y = unpack_batch(batch)
            with _autocast(device, amp):
                tokens = model.run_blocks(images.to(device)).tokens
                f = model.vit.forward_head(tokens, pre_logits=True)
            feats.append(f.float().cpu())
            labels.append(y.cpu())
    return _FeatureSet(torch.cat(feats), torch.cat(labels))


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------

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


def train(model: nn.Module, train_data, val_data=None, config: Optional[TrainConfig] = None,
          out_dir: Optional[str | os.PathLike] = None, *, test_data=None, callbacks: Iterable[Any] = (),
          resume: bool | str = False, meta: Optional[dict] = None, progress: bool = False,
          checkpoint_name: Optional[str] = None) -> TrainResult:
    """Train ``model`` (a :class:`TransferModel`) on ``train_data``.

    Args:
        model: built by :func:`toast_core.build_model`; what requires grad trains.
        train_data, val_data, test_data: Datasets of dicts (``image`` (3, H, W) float, ``label`` int)
            or (image, label) pairs. ``val_data`` is evaluated after every epoch, ``test_data`` once at
            the end; both optional.
        config: hyper-parameters (:class:`TrainConfig`).
        out_dir: where the checkpoint (``model.safetensors`` + ``config.json``) and the training state
            (``last.safetensors``) go; None = keep nothing on disk.
        callbacks: see the module docstring.
        resume: continue from ``out_dir/last.safetensors`` when present. ``True``: the saved state must
            belong to this run (same model, config, data), else :class:`TrainingError`; ``"auto"``: a
            state from another run is discarded and training starts afresh.
        meta: extra fields for the checkpoint config (``classes``, ``data``...).
        progress: show a tqdm bar (rank 0).
        checkpoint_name: weights file name inside ``out_dir`` (default ``model.safetensors``).
    Returns:
        a :class:`TrainResult`.
    Raises:
        NonFiniteLossError: the loss or gradients became NaN/inf (previous checkpoint kept).
        TrainingError: nothing to train, or a saved state that belongs to another run.
    """
    from ..io import checkpoints as ckpt

    cfg = config or TrainConfig()
    start_time = time.perf_counter()
    ctx = init_distributed(cfg.device)
    try:
        device = resolve_device(cfg.device, ctx.local_rank if ctx.world > 1 else None)
        amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        bar = TqdmProgress("pretune" if cfg.stage == "pretune" else getattr(model, "method_name", "train")) \
            if progress and ctx.is_main else None
        events = Events([*(callbacks or []), *([bar] if bar else [])], enabled=ctx.is_main)
        out = Path(out_dir) if out_dir is not None else None
        weights_path = (out / (checkpoint_name or ckpt.WEIGHTS_NAME)) if out is not None else None
        state_path = out / ckpt.STATE_NAME if out is not None else None
        if out is not None and ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(out)

        model.to(device)
        signature = run_signature(model, cfg, train_data, val_data,
                                  {k: (meta or {}).get(k) for k in ("pretuned_from", "demo_hash") if k in (meta or {})})
        optimizer = build_optimizer(model, cfg)

        # Feature caching (single process, head-only models): the backbone runs once per image.
        cached = cfg.cache_features and ctx.world == 1 and is_head_only(model)
        eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size
        if cached:
            events.emit("on_message", "head-only model: computing backbone features once")
            train_set = compute_features(model, train_data, eval_bs, device, amp, cfg.num_workers)
            val_set = compute_features(model, val_data, eval_bs, device, amp, cfg.num_workers) if val_data is not None else None
            head = model.vit.head
            step_fn = lambda x: (head(x), {})  # noqa: E731
            eval_forward = head
            workers = 0
        else:
            train_set, val_set = train_data, val_data
            first_pass = None
            if cfg.cache_first_pass and ctx.world == 1 and device.type == "cpu" and hasattr(model, "first_pass_tokens"):
                from .first_pass import FirstPassCache

                first_pass = FirstPassCache(model.first_pass_tokens)  # TOAST: the frozen bottom-up pass
            wrapper = _TrainStep(model, cfg.stage, first_pass)
            if ctx.world > 1:
                from torch.nn.parallel import DistributedDataParallel as DDP

                wrapper = DDP(wrapper, device_ids=[device.index] if device.type == "cuda" else None)
            step_fn = wrapper
            eval_forward = None
            workers = cfg.num_workers

        n_local = len(epoch_indices(len(train_set), 0, cfg.seed, ctx.world, ctx.rank))
        steps_per_epoch = math.ceil(n_local / cfg.batch_size)
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        total_steps = steps_per_epoch * cfg.epochs
        warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))

        history: list[dict] = []
        epoch, step_in_epoch, global_step, seconds_before = 0, 0, 0, 0.0
        restored = False
        if resume and state_path is not None and state_path.is_file():
            saved_sig = ckpt.read_training_state(state_path)[1]["progress"].get("signature")
            if saved_sig != signature and resume == "auto":
                events.emit("on_message", f"discarding {state_path}: it belongs to another run")
                if ctx.is_main:
                    state_path.unlink(missing_ok=True)
            elif saved_sig != signature:
                raise TrainingError(
                    f"the training state in {state_path} belongs to another run (signature {saved_sig}, this run "
                    f"{signature}: model, config or data differ). Use another --out directory, or start afresh "
                    "without resume.")
            else:
                prog = ckpt.restore_training_state(state_path, model, optimizer)
                epoch, step_in_epoch, global_step = prog["epoch"], prog["step_in_epoch"], prog["global_step"]
                history, seconds_before = prog.get("history", []), float(prog.get("seconds", 0.0))
                restored = True
                events.emit("on_message", f"resumed from {state_path} at epoch {epoch + 1}, step {global_step}")
        if not restored:
            seed_everything(cfg.seed + ctx.rank)

        def elapsed() -> float:
            return round(seconds_before + time.perf_counter() - start_time, 2)

        result = TrainResult(model=model, history=history, checkpoint=None)
        if history and "val_acc" in history[-1]:  # resumed: the last evaluation is in the history
            result.val = {"accuracy": history[-1]["val_acc"], "loss": history[-1]["val_loss"], "n": len(val_data or [])}

        def save_all(complete: bool, extra: Optional[dict] = None, state: bool = True) -> None:
            if out is None or not ctx.is_main:
                return
            summary = {}
            if result.val:
                summary.update(val_accuracy=result.val["accuracy"], val_loss=result.val["loss"])
            if result.test:
                summary.update(test_accuracy=result.test["accuracy"], test_loss=result.test["loss"])
            info = {"stage": cfg.stage, "metrics": summary, "train": cfg.to_dict(), "run_hash": signature, "history": history,
                    "epochs_done": epoch, "global_step": global_step, "complete": complete,
                    "train_seconds": elapsed(), **(meta or {}), **(extra or {})}
            result.checkpoint = ckpt.save_checkpoint(model, weights_path, info)
            if state:
                save_training_state()

        def save_training_state() -> None:
            if out is None or not ctx.is_main:
                return
            ckpt.save_training_state(state_path, model, optimizer,
                                     {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                                      "history": history, "signature": signature, "seconds": elapsed()})

        stop = False
        while epoch < cfg.epochs and not stop:
            model.train()
            epoch_start = time.perf_counter()
            order = epoch_indices(len(train_set), epoch, cfg.seed, ctx.world, ctx.rank)
            order = order[: steps_per_epoch * cfg.batch_size]
            loader = torch.utils.data.DataLoader(
                train_set, batch_size=cfg.batch_size, sampler=_ListSampler(order[step_in_epoch * cfg.batch_size:]),
                num_workers=workers, pin_memory=device.type == "cuda", drop_last=False)
            loss_sum, correct, seen = 0.0, 0.0, 0.0
            for batch in loader:
                images, labels = unpack_batch(batch)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                lr = lr_at(global_step, total_steps, warmup, cfg.lr, cfg.min_lr_ratio)
                set_lr(optimizer, lr)
                with _autocast(device, amp):
                    logits, extra = step_fn(images)
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
                    for value in extra.values():
                        loss = loss + value.float()
                bad = not bool(torch.isfinite(loss.detach()))
                if ctx.broadcast_flag(bad, device) if ctx.world > 1 else bad:
                    raise NonFiniteLossError(_nonfinite_message("loss", epoch, global_step, lr, weights_path))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                if cfg.grad_clip > 0:
                    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                else:
                    norm = torch.norm(torch.stack([p.grad.detach().norm() for p in params])) if params else torch.zeros(())
                if not bool(torch.isfinite(norm)):
                    raise NonFiniteLossError(_nonfinite_message("gradient", epoch, global_step, lr, weights_path))
                optimizer.step()
                global_step += 1
                step_in_epoch += 1
                loss_value = float(loss.detach())
                loss_sum += loss_value * labels.numel()
                correct += float((logits.detach().argmax(-1) == labels).sum())
                seen += labels.numel()
                if events.emit("on_step", global_step, total_steps, loss_value, lr):
                    stop = True
                if ctx.world > 1:
                    stop = ctx.broadcast_flag(stop, device)
                if stop:
                    break
                if cfg.save_every_steps and global_step % cfg.save_every_steps == 0 and step_in_epoch < steps_per_epoch:
                    save_training_state()
            sums = ctx.all_reduce_sum([loss_sum, correct, seen], device)
            if stop and step_in_epoch < steps_per_epoch:
                save_training_state()
                result.stopped = True
                events.emit("on_message", f"stopped at step {global_step}; resume to continue")
                break
            metrics = {"epoch": epoch + 1, "train_loss": sums[0] / max(sums[2], 1), "train_acc": sums[1] / max(sums[2], 1),
                       "lr": lr_at(max(global_step - 1, 0), total_steps, warmup, cfg.lr, cfg.min_lr_ratio)}
            if val_set is not None:
                val = evaluate(model, val_set, eval_bs, device, amp, eval_forward, ctx, workers)
                metrics.update(val_acc=val["accuracy"], val_loss=val["loss"])
                result.val = val
            metrics["seconds"] = round(time.perf_counter() - epoch_start, 2)
            history.append(metrics)
            epoch += 1
            step_in_epoch = 0
            save_all(complete=epoch >= cfg.epochs and test_data is None)
            events.emit("on_epoch", epoch, dict(metrics))
            if stop:
                result.stopped = True
                break

        if not result.stopped and test_data is not None:
            if cached:
                test_set = compute_features(model, test_data, eval_bs, device, amp, cfg.num_workers)
            else:
                test_set = test_data
            result.test = evaluate(model, test_set, eval_bs, device, amp, eval_forward, ctx, workers)
            events.emit("on_message", f"test accuracy {result.test['accuracy']:.4f} on {result.test['n']} images")
            save_all(complete=True, extra={"test": result.test}, state=False)
        elif out is not None and ctx.is_main and weights_path.is_file():
            result.checkpoint = weights_path
        result.history = history
        result.steps = global_step
        result.seconds = time.perf_counter() - start_time
        if bar is not None:
            bar.close()
        return result
    finally:
        if ctx.owns_group:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def _nonfinite_message(what: str, epoch: int, step: int, lr: float, weights: Optional[Path]) -> str:
    if weights is not None and weights.is_file():
        kept = f" The last good checkpoint, {weights}, is kept (resume continues from it)."
    elif weights is not None:
        kept = " No checkpoint had been written yet."
    else:
        kept = ""
    return (f"training stopped: the {what} became NaN or infinite at epoch {epoch + 1}, step {step + 1} "
            f"(learning rate {lr:.3g}).{kept} Try a lower learning rate, gradient clipping, or check the "
            "input data for NaN/inf values.")
