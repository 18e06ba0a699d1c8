"""The benchmark sections: each compares variants on one backbone in one interleaved run."""
from __future__ import annotations

import gc
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .config import BackboneSpec, BenchConfig, NUM_CLASSES
from .rss import rss_peak_subprocess
from .timing import _autocast, _quiet_profiler, peak_memory, summarise_times, time_interleaved
from .workload import (Peer, analytic_forward_flops, attention_flops, build, counted_flops, peer_matrix_bytes,
                       profile_variants)

class _Ctx:
    def __init__(self, cfg: BenchConfig, device: torch.device, dtype: str):
        self.cfg, self.device, self.dtype = cfg, device, dtype

    def images(self, batch: int, size: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed + seed)
        return torch.randn(batch, 3, size, size, generator=g).to(self.device)

    def infer(self, fn: Callable[[], object]) -> Callable[[], object]:
        def run():
            with torch.no_grad(), _autocast(self.device, self.dtype):
                return fn()
        return run

    def mem(self, fn: Callable[[], object]) -> int:
        with _quiet_profiler():
            return peak_memory(fn, self.device)


def bench_record(ctx: _Ctx, spec: BackboneSpec) -> dict:
    """Recording every layer's head-averaged CLS maps vs the plain (fused) forward."""
    from ..recording import extract_attention

    model = build("linear", spec, ctx.device, seed=ctx.cfg.seed)
    x = ctx.images(ctx.cfg.batch, spec.img_size)
    fns = {"plain": ctx.infer(lambda: model(x)),
           "record": ctx.infer(lambda: extract_attention(model, x).cls["main"]),
           "record_cls": ctx.infer(lambda: extract_attention(model, x, token_norm=False).cls["main"]),
           "timm_forward": ctx.infer(lambda: model.vit(x))}
    times = summarise_times(time_interleaved(fns, ctx.device, ctx.cfg.reps, ctx.cfg.warmup), base="plain")
    flops = analytic_forward_flops(model, x)
    counted = counted_flops(fns["plain"])
    counted_total = counted["total"] + (0 if counted["attention_counted"] else attention_flops(model, x))
    plain_s = times["plain"]["median_ms"] / 1e3
    out = {"backbone": spec.label(), "batch": ctx.cfg.batch, "tokens": _tokens(model, spec.img_size),
           "times": times, "overhead": times["record"]["ratio"],
           "overhead_cls": times["record_cls"]["ratio"], "forward_gflop": flops / 1e9,
           "forward_gflop_counted": counted_total / 1e9,
           "achieved_tflops": flops / plain_s / 1e12, "images_per_s_plain": ctx.cfg.batch / plain_s}
    if ctx.cfg.peak_tflops:
        out["peak_share"] = out["achieved_tflops"] / ctx.cfg.peak_tflops
    if ctx.cfg.profile:
        out["profile"] = profile_variants({k: fns[k] for k in ("plain", "record", "record_cls")}, ctx.device)
    return out


def bench_peer(ctx: _Ctx, spec: BackboneSpec) -> dict:
    """timm AttentionExtract vs this project: time, extra peak memory over the plain forward, agreement."""
    from ..recording import extract_attention

    model = build("linear", spec, ctx.device, seed=ctx.cfg.seed)
    peer = Peer(spec, ctx.device, source=model)
    hooks = Peer(spec, ctx.device, source=model, method="hook")
    x = ctx.images(ctx.cfg.batch, spec.img_size)
    ours_fn = ctx.infer(lambda: extract_attention(model, x).cls["main"])
    peer_fn = ctx.infer(lambda: peer.cls_maps(x))
    hooks_fn = ctx.infer(lambda: hooks.cls_maps(x))
    ours, theirs, theirs_h = ours_fn().float(), peer_fn().float(), hooks_fn().float()
    diff = float(max((ours - theirs).abs().max(), (ours - theirs_h).abs().max()))
    raw = time_interleaved({"ours": ours_fn, "peer": peer_fn, "peer_hooks": hooks_fn}, ctx.device,
                           ctx.cfg.reps, ctx.cfg.warmup)
    times = summarise_times(raw, base="peer")
    vs_hooks = summarise_times(raw, base="peer_hooks")["ours"]
    plain_fn = ctx.infer(lambda: model(x))
    peer_plain_fn = ctx.infer(lambda: peer.forward_plain(x))
    for f in (plain_fn, peer_plain_fn):
        f()  # first-call allocations (weights caches, fx graph) are not part of any variant
    mem = {"plain": ctx.mem(plain_fn), "ours": ctx.mem(ours_fn), "peer": ctx.mem(peer_fn),
           "peer_hooks": ctx.mem(hooks_fn), "peer_plain_unfused": ctx.mem(peer_plain_fn)}
    extra_ours = max(mem["ours"] - mem["plain"], 0)
    extra_peer = max(mem["peer"] - mem["plain"], 0)
    extra_hooks = max(mem["peer_hooks"] - mem["plain"], 0)
    out = {"backbone": spec.label(), "batch": ctx.cfg.batch, "tokens": _tokens(model, spec.img_size),
           "maps_shape": list(ours.shape), "maps_max_abs_diff": diff,
           "maps_agree": bool(diff <= (1e-4 if ctx.dtype == "fp32" else 2e-2)),
           "times": times, "time_ratio": times["ours"]["ratio"],
           "time_ratio_vs_hooks": vs_hooks["ratio"], "cpu_ratio_vs_hooks": vs_hooks.get("cpu_ratio"),
           "peak_bytes": mem, "extra_bytes": {"ours": extra_ours, "peer": extra_peer, "peer_hooks": extra_hooks},
           "memory_ratio": extra_ours / extra_peer if extra_peer else math.nan,
           "memory_method": "cuda max_memory_allocated" if ctx.device.type == "cuda"
           else "torch.profiler allocation events (live tensor bytes)"}
    if ctx.cfg.rss and ctx.device.type == "cpu":
        rss = {v: rss_peak_subprocess(spec, ctx.cfg.batch, v, ctx.cfg.seed) for v in ("plain", "ours", "peer")}
        out["rss_delta_bytes"] = rss
        if all(v is not None for v in rss.values()):
            e_o, e_p = max(rss["ours"] - rss["plain"], 0), max(rss["peer"] - rss["plain"], 0)
            out["rss_extra_bytes"] = {"ours": e_o, "peer": e_p}
            out["rss_memory_ratio"] = e_o / e_p if e_p else math.nan
    return out


def bench_toast(ctx: _Ctx, spec: BackboneSpec) -> dict:
    """TOAST and TOAST-Lite inference vs a single-pass model of the same backbone."""
    single = build("linear", spec, ctx.device, seed=ctx.cfg.seed)
    toast = build("toast", spec, ctx.device, seed=ctx.cfg.seed)
    lite = build("toast-lite", spec, ctx.device, seed=ctx.cfg.seed)
    x = ctx.images(ctx.cfg.batch, spec.img_size)
    fns = {"single": ctx.infer(lambda: single(x)), "toast": ctx.infer(lambda: toast(x)),
           "toast-lite": ctx.infer(lambda: lite(x))}
    times = summarise_times(time_interleaved(fns, ctx.device, ctx.cfg.reps, ctx.cfg.warmup), base="single")
    fl = {}  # per image, counted at the timed batch size (TOAST folds W_v·B_l only when B·N > C)
    for n, m, passes in (("single", single, 1), ("toast", toast, 2), ("toast-lite", lite, 2)):
        c = counted_flops(ctx.infer(lambda m=m: m(x)))
        fl[n] = (c["total"] + (0 if c["attention_counted"] else passes * attention_flops(m, x))) / len(x)
    return {"backbone": spec.label(), "batch": ctx.cfg.batch, "times": times,
            "ratio": times["toast"]["ratio"], "ratio_lite": times["toast-lite"]["ratio"],
            "flops_per_image": fl, "flop_ratio": fl["toast"] / fl["single"],
            "flop_ratio_lite": fl["toast-lite"] / fl["single"],
            "note": "FLOPs from FlopCounterMode (+ analytic QK^T/AV terms where it does not count SDPA); "
                    "the time ratio cannot go below the FLOP ratio by much, both passes run the same backbone"}


def _train_step(model, x: torch.Tensor, y: torch.Tensor, ctx: _Ctx, stage: str = "tune") -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(ctx.device, ctx.dtype):
            logits, extra = model.training_outputs(x, stage=stage)
            loss = F.cross_entropy(logits.float(), y) + sum(extra.values())
        loss.backward()
        opt.step()
    return step


def bench_train(ctx: _Ctx, spec: BackboneSpec) -> dict:
    """One optimiser step (forward, backward, AdamW) of every method vs full fine-tuning."""
    from ..methods import available_methods

    x = ctx.images(ctx.cfg.batch, spec.img_size)
    y = torch.randint(0, NUM_CLASSES, (ctx.cfg.batch,), generator=torch.Generator().manual_seed(1)).to(ctx.device)
    fns, counts = {}, {}
    for m in available_methods():
        model = build(m, spec, ctx.device, seed=ctx.cfg.seed)
        fns[m] = _train_step(model, x, y, ctx)
        counts[m] = model.parameter_counts()["trainable"]
        if m == "toast":
            fns["toast:pretune"] = _train_step(model, x, y, ctx, stage="pretune")
    order = ["finetune"] + [n for n in fns if n != "finetune"]
    times = summarise_times(time_interleaved({n: fns[n] for n in order}, ctx.device, ctx.cfg.train_reps,
                                             ctx.cfg.warmup), base="finetune")
    return {"backbone": spec.label(), "batch": ctx.cfg.batch, "times": times, "trainable": counts,
            "ratios": {n: times[n]["ratio"] for n in order}}


def random_box_masks(batch: int, size: int, seed: int = 0) -> list:
    """One random box mask (size, size) per image, 30–70 % of the side each way."""
    from ..analysis.metrics import box_to_mask

    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(batch):
        bw, bh = rng.uniform(0.3, 0.7, size=2) * size
        x0, y0 = rng.uniform(0, size - bw), rng.uniform(0, size - bh)
        masks.append(box_to_mask((x0, y0, x0 + bw, y0 + bh), size, size))
    return masks


def analyse_batch_metrics(model, images: torch.Tensor, masks: list) -> dict:
    """Maps + per-map metrics of :mod:`toast_core.analysis.metrics`: ``energy_in_mask`` and ``pointing_game`` for
    every layer's CLS map of every image (one function call per map).

    Returns:
        ``{"energy": (L, B) float array, "pointing": (L, B) bool array}``.
    """
    from ..analysis import default_tolerance
    from ..analysis.metrics import energy_in_mask, pointing_game
    from ..recording import extract_attention

    maps = extract_attention(model, images).final("cls").float().cpu().numpy()  # (L, B, h, w)
    energy = np.empty(maps.shape[:2])
    pointing = np.empty(maps.shape[:2], dtype=bool)
    for b, mask in enumerate(masks):
        tol = default_tolerance(mask.shape)  # 15 px at 224 px, as the analysis uses
        for layer in range(maps.shape[0]):
            energy[layer, b] = energy_in_mask(maps[layer, b], mask)
            pointing[layer, b] = pointing_game(maps[layer, b], mask, tolerance_px=tol)
    return {"energy": energy, "pointing": pointing}


def analyse_batch_vectorised(model, images: torch.Tensor, masks: list) -> dict:
    """Maps + the batch analysis path of :mod:`toast_core.analysis` (what ``analyze`` and the app run):
    per-image geometry once, then energy, pointing game, IoU, AUC and entropy of every layer's map at once.

    Returns:
        the dict of :func:`toast_core.analysis.batch_map_metrics`, arrays of length L·B.
    """
    from ..analysis import _stack_geometry, batch_map_metrics, image_geometry
    from ..recording import extract_attention

    res = extract_attention(model, images)
    maps = res.final("cls")  # (L, B, h, w)
    L, B = maps.shape[:2]
    geo = _stack_geometry([image_geometry(mk, res.grid) for mk in masks])
    geo = {k: v.repeat(L, *([1] * (v.ndim - 1))) for k, v in geo.items()}  # layer-major, like maps
    return batch_map_metrics(maps.reshape(L * B, *maps.shape[2:]), geo)


def bench_analysis(ctx: _Ctx, spec: BackboneSpec) -> dict:
    """Batch analysis throughput (maps + metrics, every layer) vs plain inference throughput, images/s."""
    model = build("linear", spec, ctx.device, seed=ctx.cfg.seed)
    B = ctx.cfg.batch
    x = ctx.images(B, spec.img_size)
    masks = random_box_masks(B, spec.img_size, ctx.cfg.seed)
    fns = {"plain": ctx.infer(lambda: model(x)),
           "analysis": ctx.infer(lambda: analyse_batch_vectorised(model, x, masks)),
           "metrics_per_map": ctx.infer(lambda: analyse_batch_metrics(model, x, masks))}
    times = summarise_times(time_interleaved(fns, ctx.device, ctx.cfg.reps, ctx.cfg.warmup), base="plain")
    ips = {n: B / (t["median_ms"] / 1e3) for n, t in times.items()}
    vec, per_map = fns["analysis"](), fns["metrics_per_map"]()
    agree = float(np.nanmax(np.abs(vec["energy_target"] - per_map["energy"].reshape(-1))))
    return {"backbone": spec.label(), "batch": B, "times": times, "images_per_s": ips,
            "throughput_ratio": {n: 1.0 / times[n]["ratio"] for n in times if n != "plain"},
            "cpu_throughput_ratio": {n: 1.0 / times[n]["cpu_ratio"] for n in times
                                     if n != "plain" and times[n].get("cpu_ratio")},
            "metrics_finite": bool(np.isfinite(per_map["energy"]).all()),
            "energy_paths_max_abs_diff": agree,
            "pointing_paths_agree": bool(np.array_equal(vec["pointing_hit"].astype(bool),
                                                        per_map["pointing"].reshape(-1))),
            "mean_energy_last_layer": float(per_map["energy"][-1].mean()),
            "pointing_rate_last_layer": float(per_map["pointing"][-1].mean())}


def bench_scaling(ctx: _Ctx, spec: BackboneSpec) -> dict:
    """Time and memory of the plain forward and of recording, over image sizes × batch sizes."""
    from ..recording import extract_attention

    rows = []
    for size in ctx.cfg.sizes:
        model = build("linear", spec, ctx.device, img_size=size, seed=ctx.cfg.seed)
        vit = model.vit
        peer = None
        for batch in ctx.cfg.batches:
            x = ctx.images(batch, size)
            plain_fn = ctx.infer(lambda: model(x))
            rec_fn = ctx.infer(lambda: extract_attention(model, x).cls["main"])
            times = summarise_times(time_interleaved({"plain": plain_fn, "record": rec_fn}, ctx.device,
                                                     ctx.cfg.scaling_reps, ctx.cfg.warmup), base="plain")
            mem_plain, mem_rec = ctx.mem(plain_fn), ctx.mem(rec_fn)
            est = peer_matrix_bytes(spec, size, batch, vit.blocks[0].attn.num_heads, len(vit.blocks),
                                    vit.num_prefix_tokens, vit.patch_embed.patch_size[0],
                                    bytes_per=4)
            peer_extra, peer_kind = est, "analytic (kept matrices only)"
            if est <= ctx.cfg.peer_max_bytes:
                peer = peer or Peer(spec, ctx.device, img_size=size, source=model)
                pfn = ctx.infer(lambda: peer.cls_maps(x))
                pfn()
                peer_extra, peer_kind = max(ctx.mem(pfn) - mem_plain, 0), "measured"
                del pfn
            rows.append({"img_size": size, "batch": batch, "tokens": _tokens(model, size),
                         "plain_ms": times["plain"]["median_ms"], "record_ms": times["record"]["median_ms"],
                         "plain_cpu_ms": times["plain"].get("cpu_median_ms"),
                         "record_cpu_ms": times["record"].get("cpu_median_ms"),
                         "ratio": times["record"]["ratio"], "cpu_ratio": times["record"].get("cpu_ratio"),
                         "plain_peak_bytes": mem_plain,
                         "record_extra_bytes": max(mem_rec - mem_plain, 0),
                         "peer_extra_bytes": peer_extra, "peer_extra_kind": peer_kind})
        model = peer = None  # free this size before the next
        gc.collect()
    return {"backbone": spec.name, "rows": rows}


def _tokens(model, size: int) -> int:
    vit = getattr(model, "vit", model)
    ph, pw = vit.patch_embed.patch_size
    return (size // ph) * (size // pw) + vit.num_prefix_tokens
