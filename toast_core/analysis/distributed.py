"""Sharded analysis under ``torchrun``: every rank analyses a deterministic share of the images, rank 0
gathers the rows and returns them in the order one process gives.

Sharding is by whole batches (batch ``k`` of ``batch_size`` images goes to rank ``k mod world``), so
every batch holds the same images as in a single-process run; rank 0 puts the gathered batches back in
batch order, which is exactly the single-process row order (rows are grouped per batch). Image ids
and ``faithfulness_max_images`` keep their meaning (positions in the whole dataset).

Example (one node, 4 GPUs; see the README's "Your own data" section for several nodes)::

    torchrun --standalone --nproc_per_node 4 -m toast_core analyze --checkpoints a b --data DIR --out out

Only rank 0 writes files and prints the summary; the other ranks write nothing.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Mapping, Optional, Sequence

import torch

from ..errors import InputError, ToastError
from .engine import run_analysis
from .options import Progress, resolve_device


def batch_starts(n_images: int, batch_size: int, rank: int = 0, world: int = 1) -> list[int]:
    """First image index of each batch that ``rank`` of ``world`` analyses (round robin over batches)."""
    return list(range(0, n_images, batch_size))[rank::world]


def merge_shards(shards: Sequence[Mapping]) -> list[dict]:
    """Rows of every rank's ``{"batches": [[start, rows], ...], "error": str | None}`` in batch order.

    Raises:
        InputError: a rank reported an error, or a batch came from two ranks.
    """
    errors = [f"rank {r}: {s['error']}" for r, s in enumerate(shards) if s.get("error")]
    if errors:
        raise InputError("; ".join(errors))
    batches = sorted((int(start), rows) for s in shards for start, rows in s["batches"])
    starts = [start for start, _ in batches]
    if len(set(starts)) != len(starts):
        raise InputError(f"a batch was analysed by two ranks (batch starts {starts})")
    return [row for _, rows in batches for row in rows]


@contextlib.contextmanager
def session(device: str = "auto"):
    """Join the ``torchrun`` process group for the duration (a single process outside torchrun).

    Yields the context (``world``, ``rank``, ``local_rank``, ``is_main``); on CUDA every rank uses the
    GPU ``LOCAL_RANK`` (NCCL), on CPU gloo. The group is left at the end if this call created it.
    """
    from ..training.distributed import init_distributed

    ctx = init_distributed(str(device))
    try:
        yield ctx
    finally:
        if ctx.owns_group:
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def main_first(ctx):
    """Run the enclosed block on rank 0 first, then on the other ranks (which then find what rank 0
    wrote, e.g. a generated dataset, instead of writing it too)."""
    sync = ctx.world > 1
    if sync and not ctx.is_main:
        torch.distributed.barrier()
    try:
        yield
    finally:
        if sync and ctx.is_main:
            torch.distributed.barrier()


def run_sharded(ctx, models: Mapping[str, torch.nn.Module], dataset, *, batch_size: int = 32,
                device="auto", progress: Optional[Progress] = None, **options) -> Optional[list[dict]]:
    """:func:`run_analysis` over this rank's share of ``dataset``; rows (list of dicts) on rank 0, in the
    single-process order, and ``None`` on the other ranks. Outside torchrun (``ctx.world == 1``) it is
    ``run_analysis(..., as_frame=False)``.

    ``progress(done, total)`` counts this rank's images × models. An error in one rank's share (a
    :class:`~toast_core.errors.ToastError`) is raised on rank 0 after the gather, naming the rank.
    """
    options.pop("as_frame", None)
    if ctx.world == 1:
        return run_analysis(models, dataset, batch_size=batch_size, device=device, progress=progress,
                            as_frame=False, **options)
    dev = resolve_device(device, local_rank=ctx.local_rank)  # a bare 'cuda' is this rank's GPU
    starts = batch_starts(len(dataset), batch_size, ctx.rank, ctx.world)
    payload = {"batches": [], "error": None}
    try:
        payload["batches"] = _run_batches(models, dataset, starts, batch_size, dev, progress, options)
    except ToastError as e:
        payload["error"] = str(e)
    gathered = [None] * ctx.world if ctx.is_main else None
    # weights_only: the rows travel through torch.save / torch.load(weights_only=True), never plain pickle
    torch.distributed.gather_object(payload, gathered, dst=0, weights_only=True)
    return merge_shards(gathered) if ctx.is_main else None


def _run_batches(models, dataset, starts: list[int], batch_size: int, dev: torch.device,
                 progress: Optional[Progress], options: dict) -> list[list]:
    """``[[start, rows], ...]`` for the given batches (models stay on ``dev`` in between)."""
    homes = {}
    for name, model in models.items():
        params = list(model.parameters())
        homes[name] = (params[0].device if params else torch.device("cpu"), model.training)
        model.eval().to(dev)
    total = sum(min(batch_size, len(dataset) - s) for s in starts) * len(models)
    out, done = [], 0
    try:
        for start in starts:
            step: Callable = (lambda d, _t, base=done: progress(base + d, total)) if progress else None
            rows = run_analysis(models, dataset, batch_size=batch_size, device=dev, progress=step,
                                batch_starts=[start], as_frame=False, **options)
            out.append([start, rows])
            done += min(batch_size, len(dataset) - start) * len(models)
    finally:
        for name, (home, training) in homes.items():
            models[name].to(home).train(training)
    return out
