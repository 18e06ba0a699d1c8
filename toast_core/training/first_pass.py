"""Memoising a frozen first pass while training: TOAST's bottom-up pass needs no gradient and, with the
backbone frozen, gives the same tokens for the same image in every epoch.

:class:`FirstPassCache` keys each input image by its content (a BLAKE2 digest of its bytes), so it works
with any dataset and augmentation: a horizontally flipped image is simply another key, and an
augmentation that never repeats an image (random crops) just never hits, in which case the cache stops
storing after the first epoch's worth of misses (``hit_rate``). Stored tokens stay on the device they
were computed on, up to ``max_bytes``.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch


class FirstPassCache:
    """``cache(images)`` → ``fn(images)``, computing ``fn`` only for images not seen before.

    Args:
        fn: the first pass, images (B, 3, H, W) → tokens (B, ...), run under ``no_grad``.
        max_bytes: stop storing new entries beyond this much memory (lookups still work).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], max_bytes: int = 2 << 30):
        self.fn, self.max_bytes = fn, int(max_bytes)
        self.store: dict[bytes, torch.Tensor] = {}
        self.bytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        data = image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return hashlib.blake2b(data, digest_size=16).digest() + repr(tuple(image.shape)).encode()

    @property
    def hit_rate(self) -> float:
        return self.hits / max(1, self.hits + self.misses)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        keys = [self.key(x) for x in images]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = {}
        if missing:
            with torch.no_grad():
                out = self.fn(images[missing])
            fresh = {keys[i]: t for i, t in zip(missing, out)}
            for k, t in fresh.items():
                if self.bytes + t.numel() * t.element_size() <= self.max_bytes:
                    self.store[k] = t
                    self.bytes += t.numel() * t.element_size()
        return torch.stack([fresh[k] if k in fresh else self.store[k] for k in keys])
