"""Batches, data order, evaluation, and the cached backbone features head-only models train on."""
from __future__ import annotations

import random
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..device import autocast
from ..errors import InputError
from .distributed import DistContext

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
                with autocast(device, amp):
                    logits = fn(images)
                logits = logits.float()
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                correct += float((logits.argmax(-1) == labels).sum())
                n += labels.numel()
    finally:
        model.train(was_training)
    correct, loss_sum, n = ctx.all_reduce_sum([correct, loss_sum, n], device)
    return {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1), "n": int(n)}


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
            with autocast(device, amp):
                tokens = model.run_blocks(images.to(device)).tokens
                f = model.vit.forward_head(tokens, pre_logits=True)
            feats.append(f.float().cpu())
            labels.append(y.cpu())
    return _FeatureSet(torch.cat(feats), torch.cat(labels))
