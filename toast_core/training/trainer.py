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

Callbacks: see :mod:`.callbacks` (a callback that returns ``False`` from ``on_step`` stops the run after
that step; the state is saved, so it can resume).

:func:`train` reads as its steps; the parts live beside it: :mod:`.config` (what a run is asked),
:mod:`.optimiser` (groups and schedule), :mod:`.evaluation` (batches, data order, evaluation, cached
features), :mod:`.callbacks`, :mod:`.distributed` and :mod:`.run_state` (position, checkpoint, resume).

Example::

    model = build_model("lora", num_classes=12)
    result = train(model, train_set, val_set, TrainConfig(epochs=5, lr=1e-3), out_dir="runs/lora")
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..device import autocast, resolve_device
from .callbacks import Events, TqdmProgress
from .config import NonFiniteLossError, TrainConfig, TrainingError, TrainResult
from .distributed import DistContext, _TrainStep, init_distributed
from .evaluation import (_FeatureSet, _ListSampler, compute_features, epoch_indices, evaluate, is_head_only,
                         seed_everything, unpack_batch)
from .optimiser import build_optimizer, lr_at, name_matches, set_lr
from .run_state import RunState, open_run, run_signature

__all__ = ["train", "TrainConfig", "TrainResult", "TrainingError", "NonFiniteLossError", "Events", "TqdmProgress",
           "DistContext", "init_distributed", "build_optimizer", "set_lr", "lr_at", "name_matches", "evaluate",
           "epoch_indices", "seed_everything", "unpack_batch", "is_head_only", "compute_features", "resolve_device",
           "run_signature", "RunState", "_FeatureSet", "_ListSampler", "_TrainStep"]


@dataclass
class _Feed:
    """What the loop runs on: the training step, the data it steps over, and the step budget."""

    step_fn: Callable
    eval_forward: Optional[Callable]
    train_set: Any
    val_set: Any
    cached: bool
    workers: int
    eval_bs: int
    steps_per_epoch: int = 0
    total_steps: int = 0
    warmup: int = 0


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
    cfg = config or TrainConfig()
    start = time.perf_counter()
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
        model.to(device)
        run = open_run(model, build_optimizer(model, cfg), cfg, train_data, val_data, out_dir, checkpoint_name,
                       meta, ctx.is_main, start)
        feed = _feed(model, cfg, ctx, device, amp, train_data, val_data, events)
        if not run.restore(resume, lambda text: events.emit("on_message", text)):
            seed_everything(cfg.seed + ctx.rank)
        run.result = _result_so_far(model, run.history, val_data)
        while run.epoch < cfg.epochs:
            if _train_epoch(run, feed, ctx, device, amp, events, test_data):
                run.result.stopped = True
                break
        _finish(run, feed, ctx, device, amp, events, test_data)
        if bar is not None:
            bar.close()
        return run.result
    finally:
        if ctx.owns_group:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def _feed(model: nn.Module, cfg: TrainConfig, ctx: DistContext, device: torch.device, amp: bool,
          train_data, val_data, events: Events) -> _Feed:
    """How steps run: on cached backbone features (head-only models, one process), else through the
    model's ``training_outputs`` (TOAST's frozen first pass memoised on a CPU; DDP under torchrun)."""
    eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size
    if cfg.cache_features and ctx.world == 1 and is_head_only(model):
        events.emit("on_message", "head-only model: computing backbone features once")
        train_set = compute_features(model, train_data, eval_bs, device, amp, cfg.num_workers)
        val_set = compute_features(model, val_data, eval_bs, device, amp, cfg.num_workers) if val_data is not None else None
        head = model.vit.head
        feed = _Feed(lambda x: (head(x), {}), head, train_set, val_set, True, 0, eval_bs)
    else:
        first_pass = None
        if cfg.cache_first_pass and ctx.world == 1 and device.type == "cpu" and getattr(model, "has_top_down", False):
            from .first_pass import FirstPassCache

            first_pass = FirstPassCache(model.first_pass_tokens)  # TOAST: the frozen bottom-up pass
        wrapper = _TrainStep(model, cfg.stage, first_pass)
        if ctx.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            wrapper = DDP(wrapper, device_ids=[device.index] if device.type == "cuda" else None)
        feed = _Feed(wrapper, None, train_data, val_data, False, cfg.num_workers, eval_bs)
    n_local = len(epoch_indices(len(feed.train_set), 0, cfg.seed, ctx.world, ctx.rank))
    feed.steps_per_epoch = math.ceil(n_local / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        feed.steps_per_epoch = min(feed.steps_per_epoch, cfg.max_steps_per_epoch)
    feed.total_steps = feed.steps_per_epoch * cfg.epochs
    feed.warmup = min(int(round(cfg.warmup_epochs * feed.steps_per_epoch)), max(feed.total_steps - 1, 0))
    return feed


def _result_so_far(model: nn.Module, history: list, val_data) -> TrainResult:
    result = TrainResult(model=model, history=history, checkpoint=None)
    if history and "val_acc" in history[-1]:  # resumed: the last evaluation is in the history
        result.val = {"accuracy": history[-1]["val_acc"], "loss": history[-1]["val_loss"], "n": len(val_data or [])}
    return result


def _train_epoch(run: RunState, feed: _Feed, ctx: DistContext, device: torch.device, amp: bool, events: Events,
                 test_data) -> bool:
    """One epoch (or the rest of one, after a resume): steps, then evaluation and the checkpoint.
    Returns True when a callback stopped the run."""
    cfg, model = run.cfg, run.model
    model.train()
    epoch_start = time.perf_counter()
    order = epoch_indices(len(feed.train_set), run.epoch, cfg.seed, ctx.world, ctx.rank)
    order = order[: feed.steps_per_epoch * cfg.batch_size]
    loader = torch.utils.data.DataLoader(
        feed.train_set, batch_size=cfg.batch_size, sampler=_ListSampler(order[run.step_in_epoch * cfg.batch_size:]),
        num_workers=feed.workers, pin_memory=device.type == "cuda", drop_last=False)
    loss_sum, correct, seen, stop = 0.0, 0.0, 0.0, False
    for batch in loader:
        images, labels = unpack_batch(batch)
        labels = labels.to(device, non_blocking=True)
        loss_value, lr, hits = _step(run, feed, ctx, device, amp, images.to(device, non_blocking=True), labels)
        loss_sum += loss_value * labels.numel()
        correct += hits
        seen += labels.numel()
        stop = events.emit("on_step", run.global_step, feed.total_steps, loss_value, lr)
        if ctx.world > 1:
            stop = ctx.broadcast_flag(stop, device)
        if stop:
            break
        if cfg.save_every_steps and run.global_step % cfg.save_every_steps == 0 \
                and run.step_in_epoch < feed.steps_per_epoch:
            run.save_training_state()
    sums = ctx.all_reduce_sum([loss_sum, correct, seen], device)
    if stop and run.step_in_epoch < feed.steps_per_epoch:
        run.save_training_state()
        events.emit("on_message", f"stopped at step {run.global_step}; resume to continue")
        return True
    metrics = {"epoch": run.epoch + 1, "train_loss": sums[0] / max(sums[2], 1), "train_acc": sums[1] / max(sums[2], 1),
               "lr": lr_at(max(run.global_step - 1, 0), feed.total_steps, feed.warmup, cfg.lr, cfg.min_lr_ratio)}
    if feed.val_set is not None:
        val = evaluate(model, feed.val_set, feed.eval_bs, device, amp, feed.eval_forward, ctx, feed.workers)
        metrics.update(val_acc=val["accuracy"], val_loss=val["loss"])
        run.result.val = val
    metrics["seconds"] = round(time.perf_counter() - epoch_start, 2)
    run.history.append(metrics)
    run.epoch += 1
    run.step_in_epoch = 0
    run.save_checkpoint(complete=run.epoch >= cfg.epochs and test_data is None)
    events.emit("on_epoch", run.epoch, dict(metrics))
    return stop


def _step(run: RunState, feed: _Feed, ctx: DistContext, device: torch.device, amp: bool, images: torch.Tensor,
          labels: torch.Tensor) -> tuple[float, float, float]:
    """One optimizer step at the scheduled rate; NaN/inf loss or gradients stop the run.
    Returns (loss, learning rate, correct predictions)."""
    cfg, optimizer = run.cfg, run.optimizer
    lr = lr_at(run.global_step, feed.total_steps, feed.warmup, cfg.lr, cfg.min_lr_ratio)
    set_lr(optimizer, lr)
    with autocast(device, amp):
        logits, extra = feed.step_fn(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
        for value in extra.values():
            loss = loss + value.float()
    bad = not bool(torch.isfinite(loss.detach()))
    if ctx.broadcast_flag(bad, device) if ctx.world > 1 else bad:
        raise NonFiniteLossError(_nonfinite_message("loss", run.epoch, run.global_step, lr, run.weights_path))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if cfg.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    else:
        norm = torch.norm(torch.stack([p.grad.detach().norm() for p in params])) if params else torch.zeros(())
    if not bool(torch.isfinite(norm)):
        raise NonFiniteLossError(_nonfinite_message("gradient", run.epoch, run.global_step, lr, run.weights_path))
    optimizer.step()
    run.global_step += 1
    run.step_in_epoch += 1
    return float(loss.detach()), lr, float((logits.detach().argmax(-1) == labels).sum())


def _finish(run: RunState, feed: _Feed, ctx: DistContext, device: torch.device, amp: bool, events: Events,
            test_data) -> None:
    """The test split once at the end (the checkpoint rewritten with it), and the result's totals."""
    result = run.result
    if not result.stopped and test_data is not None:
        test_set = compute_features(run.model, test_data, feed.eval_bs, device, amp, run.cfg.num_workers) \
            if feed.cached else test_data
        result.test = evaluate(run.model, test_set, feed.eval_bs, device, amp, feed.eval_forward, ctx, feed.workers)
        events.emit("on_message", f"test accuracy {result.test['accuracy']:.4f} on {result.test['n']} images")
        run.save_checkpoint(complete=True, extra={"test": result.test}, state=False)
    elif run.writes and run.weights_path.is_file():
        result.checkpoint = run.weights_path
    result.history = run.history
    result.steps = run.global_step
    result.seconds = time.perf_counter() - run.start


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
