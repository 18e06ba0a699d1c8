"""The models a benchmark runs (random weights), timm's AttentionExtract as the peer, and FLOP counts."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch

from .config import BackboneSpec, NUM_CLASSES
from .timing import _quiet_profiler, _sync

def build(method: str, spec: BackboneSpec, device: torch.device, img_size: Optional[int] = None, seed: int = 0):
    """A model of ``method`` on ``spec`` with random weights, in eval mode, on ``device``."""
    from ..models import build_model

    torch.manual_seed(seed)
    model = build_model(method, backbone=spec.name, num_classes=NUM_CLASSES, pretrained=False,
                        img_size=img_size or spec.img_size, backbone_kwargs=dict(spec.kwargs))
    return model.to(device).eval()


@contextmanager
def fused_attn(enabled: bool) -> Iterator[None]:
    """timm's global fused-attention switch (read when a model is built), restored on exit."""
    from timm.layers import config as timm_config
    from timm.layers import set_fused_attn

    old = timm_config._USE_FUSED_ATTN
    set_fused_attn(enabled)
    try:
        yield
    finally:
        timm_config._USE_FUSED_ATTN = old


class Peer:
    """timm's ``AttentionExtract`` on a plain timm ViT built with fused attention off (as its docs ask).

    Args:
        spec: the architecture; img_size: input side; source: a model whose ``.vit`` weights to copy
            (so both paths see the same network); device.
        method: ``"fx"`` (AttentionExtract's default: a traced graph that returns the softmax outputs;
            nodes no output depends on — the last block's MLP, the head — are pruned, so no logits) or
            ``"hook"`` (forward hooks on every ``attn_drop``; the whole forward runs).
    """

    def __init__(self, spec: BackboneSpec, device: torch.device, img_size: Optional[int] = None, source=None,
                 method: str = "fx"):
        import timm
        from timm.utils import AttentionExtract

        with fused_attn(False):
            vit = timm.create_model(spec.name, pretrained=False, num_classes=NUM_CLASSES,
                                    img_size=img_size or spec.img_size, **spec.kwargs)
        if source is not None:
            vit.load_state_dict(getattr(source, "vit", source).state_dict())
        self.vit = vit.to(device).eval()
        if any(getattr(b.attn, "fused_attn", False) for b in self.vit.blocks):
            raise RuntimeError("the peer model still uses fused attention; AttentionExtract would see nothing")
        self.method = method
        self.extract = AttentionExtract(self.vit, method=method)

    @torch.no_grad()
    def cls_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Head-averaged CLS→patch attention of every layer, (L, B, h, w), from the full matrices."""
        out = self.extract(images)  # {node or module: (B, H, N, N)} per layer
        p = self.vit.num_prefix_tokens
        rows = torch.stack([a[:, :, 0, p:] for a in out.values()])  # (L, B, H, h*w)
        h, w = self.vit.patch_embed.grid_size
        return rows.float().mean(dim=2).reshape(rows.shape[0], rows.shape[1], h, w)

    @torch.no_grad()
    def forward_plain(self, images: torch.Tensor) -> torch.Tensor:
        """The peer model's own forward (unfused attention), nothing extracted."""
        return self.vit(images)


def peer_matrix_bytes(spec: BackboneSpec, img_size: int, batch: int, num_heads: int, depth: int,
                      num_prefix: int, patch: int, bytes_per: int = 4) -> int:
    """Analytic size of the full attention matrices AttentionExtract keeps: L·B·H·N²·bytes."""
    n = (img_size // patch) ** 2 + num_prefix
    return int(depth * batch * num_heads * n * n * bytes_per)


def analytic_forward_flops(model, images: torch.Tensor) -> int:
    """FLOPs of one plain forward of a ViT (multiply-add = 2): linear layers, attention, patch embed.

    Per block and token 2·(weights of qkv, proj, MLP); per block 4·N²·C for QKᵀ and AV; the patch
    embedding 2·patches·(3·p²·C); the head 2·C·classes per image.
    """
    vit = getattr(model, "vit", model)
    B = images.shape[0]
    ph, pw = vit.patch_embed.patch_size
    h, w = images.shape[-2] // ph, images.shape[-1] // pw
    n = h * w + vit.num_prefix_tokens
    flops = 2 * B * h * w * vit.patch_embed.proj.weight.numel()
    for blk in vit.blocks:
        lin = sum(m.weight.numel() for m in blk.modules() if isinstance(m, torch.nn.Linear))
        flops += 2 * B * n * lin + 4 * B * n * n * blk.attn.attn_dim
    head = getattr(vit, "head", None)
    if isinstance(head, torch.nn.Linear):
        flops += 2 * B * head.weight.numel()
    return int(flops)


def attention_flops(model, images: torch.Tensor) -> int:
    """FLOPs of QKᵀ and AV in one pass: 4·B·N²·C per block (what FlopCounterMode misses for CPU SDPA)."""
    vit = getattr(model, "vit", model)
    ph, pw = vit.patch_embed.patch_size
    n = (images.shape[-2] // ph) * (images.shape[-1] // pw) + vit.num_prefix_tokens
    n += int(getattr(model, "num_prompt_tokens", 0))
    return int(sum(4 * images.shape[0] * n * n * blk.attn.attn_dim for blk in vit.blocks))


def profile_variants(fns: dict, device: torch.device, runs: int = 3, top: int = 12) -> dict:
    """Where the time of each variant goes, from ``torch.profiler``.

    Returns:
        ``{name: {"issue_ms", "op_ms", "op_kind", "aten_calls", "top"}}``: ``issue_ms`` = host time until
        the call returns, without waiting for the device (on CUDA: the CPU cost of launching the work;
        when it approaches the device time, the run is bound by the host); ``op_ms`` = summed kernel time
        (CUDA) or self CPU time of the operators (CPU) per call; ``aten_calls`` = ATen operator calls per
        call (nested included); ``top`` = ``[name, ms per call, calls per call]`` of the costliest.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    out = {}
    for name, fn in fns.items():
        fn()
        issue = []
        for _ in range(runs):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            issue.append(time.perf_counter() - t0)
            _sync(device)
        with _quiet_profiler(), profile(activities=acts) as prof:
            for _ in range(runs):
                fn()
            _sync(device)
        avgs = prof.key_averages()

        def cost(e):
            if cuda:
                return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            return e.self_cpu_time_total

        ranked = sorted(avgs, key=lambda e: -cost(e))[:top]
        out[name] = {"issue_ms": 1e3 * statistics.median(issue),
                     "op_ms": sum(cost(e) for e in avgs) / runs / 1e3,
                     "op_kind": "CUDA kernel time" if cuda else "self CPU time of operators",
                     "aten_calls": sum(e.count for e in avgs if e.key.startswith("aten::")) / runs,
                     "top": [[e.key, round(cost(e) / runs / 1e3, 4), e.count // runs] for e in ranked]}
    return out


def counted_flops(fn: Callable[[], object]) -> dict:
    """FLOPs of ``fn()`` counted by ``torch.utils.flop_counter.FlopCounterMode``, per operator."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    per_op = {str(k): int(v) for k, v in fc.get_flop_counts().get("Global", {}).items()}
    return {"total": int(fc.get_total_flops()), "per_op": per_op,
            "attention_counted": any("attention" in k for k in per_op)}
