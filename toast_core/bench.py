"""Benchmarks: what recording attention, TOAST and batch analysis cost, measured side by side.

Every comparison runs in ONE process on the same model, inputs and machine, with the variants
interleaved (A, B, A, B, ... with the order rotated every repetition) so that load from other
processes hits all variants alike. Each figure is the median of several runs; a ratio is the median of
the per-repetition ratios (paired, robust to drift), the ratio of the medians is kept beside it.

Sections (``BenchConfig.sections``):

* ``record``   — all layers' head-averaged CLS maps (:func:`toast_core.extract_attention`) vs the plain
  forward pass (fused attention on) vs timm's own forward of the same backbone;
* ``peer``     — the same maps through timm's ``AttentionExtract`` (which needs fused attention off)
  vs this project: time, extra peak memory over the plain forward, and agreement of the maps;
* ``toast``    — TOAST / TOAST-Lite inference vs a single-pass model of the same backbone (+ FLOPs);
* ``train``    — one optimiser step of every method vs full fine-tuning;
* ``analysis`` — batch analysis (maps + ``energy_in_mask`` + ``pointing_game`` per image and layer on
  random box masks) vs plain inference, in images/s;
* ``scaling``  — time and memory vs image size (token count) and batch size, table + PNG plot.

Memory is the peak of live tensor bytes above the start of the call: on CUDA from the caching
allocator (``max_memory_allocated``); on CPU from the allocation events of ``torch.profiler``
(``profile_memory=True``), which see exactly the tensors torch allocates. A fresh-subprocess RSS
high-water mark (``/proc/self/status`` VmHWM, reset through ``clear_refs``) cross-checks it.

Usage::

    from toast_core.bench import BenchConfig, run_benchmark, write_outputs
    results = run_benchmark(BenchConfig(quick=True))
    write_outputs(results, "bench_out")     # bench.json, bench.md, scaling.png
"""
from __future__ import annotations

import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

SECTIONS = ("record", "peer", "toast", "train", "analysis", "scaling")
NUM_CLASSES = 10
MiB = 2 ** 20


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone architecture to benchmark (random weights).

    Attributes:
        name: timm model name.
        img_size: input side in pixels (the model is built for it).
        kwargs: extra ``timm.create_model`` arguments (tiny models for ``--quick``).
    """

    name: str
    img_size: int = 224
    kwargs: dict = field(default_factory=dict)

    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        return f"{self.name}@{self.img_size}" + (f"[{extra}]" if extra else "")


DEFAULT_SPECS = (BackboneSpec("vit_small_patch14_dinov2", 224), BackboneSpec("vit_base_patch16_224", 224))
QUICK_SPECS = (
    BackboneSpec("vit_tiny_patch16_224", 32, dict(patch_size=8, depth=3, embed_dim=32, num_heads=2)),
    BackboneSpec("vit_small_patch14_reg4_dinov2", 28, dict(patch_size=7, depth=2, embed_dim=24, num_heads=3)),
)


@dataclass
class BenchConfig:
    """What to measure and how often.

    Attributes:
        specs: backbones; the first one is used by ``analysis`` and ``scaling``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        dtype: ``"fp32"`` or ``"bf16"`` (autocast); ``None`` = bf16 on CUDA, fp32 on CPU.
        batch: batch size of ``record``, ``peer``, ``toast``, ``train`` and ``analysis``.
        reps, warmup: timed and untimed repetitions per variant (``train_reps`` for training steps,
            ``scaling_reps`` for the scaling grid).
        sizes, batches: the scaling grid (image side in px, batch size).
        sections: subset of :data:`SECTIONS`.
        rss: also measure the peak RSS of each memory variant in a fresh subprocess (CPU only).
        peer_max_bytes: in ``scaling``, measure the peer only where its kept matrices are estimated
            below this; above, the analytic size is reported.
        peak_tflops: the device's dense peak (for the share of peak the forward reaches), if known.
        threads: torch intra-op threads for the run (restored after); None = leave as is.
        profile: in ``record``, also profile the plain forward and recording with ``torch.profiler``
            (host time to issue the work, kernel or CPU-op time, number of ATen calls, top operators).
        quick: tiny models and sizes, 2 repetitions (seconds; used by the tests).
        seed: seed of inputs, weights and masks.
        command: the command line, recorded in the output.
    """

    specs: tuple = DEFAULT_SPECS
    device: str = "cpu"
    dtype: Optional[str] = None
    batch: int = 8
    reps: int = 7
    warmup: int = 1
    train_reps: int = 5
    scaling_reps: int = 3
    sizes: tuple = (224, 336, 448)
    batches: tuple = (1, 8, 32)
    sections: tuple = SECTIONS
    rss: bool = True
    peer_max_bytes: int = 1 << 30
    peak_tflops: Optional[float] = None
    threads: Optional[int] = None
    profile: bool = False
    quick: bool = False
    seed: int = 0
    command: str = ""

    @classmethod
    def quick_config(cls, **overrides) -> "BenchConfig":
        base = dict(specs=QUICK_SPECS, batch=2, reps=2, warmup=1, train_reps=2, scaling_reps=1,
                    sizes=(32, 48), batches=(1, 2), rss=False, threads=1, quick=True)
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise InputError(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
        if not self.specs:
            raise InputError("at least one backbone is needed")
        for name, v in [("batch", self.batch), ("reps", self.reps), ("train_reps", self.train_reps),
                        ("scaling_reps", self.scaling_reps)]:
            if int(v) < 1:
                raise InputError(f"{name} must be >= 1, got {v}")
        if self.threads is not None and int(self.threads) < 1:
            raise InputError(f"threads must be >= 1, got {self.threads}")
        if self.warmup < 0:
            raise InputError(f"warmup must be >= 0, got {self.warmup}")
        if any(int(s) < 1 for s in self.sizes) or any(int(b) < 1 for b in self.batches):
            raise InputError("sizes and batches must be positive")
        if self.dtype not in (None, "fp32", "bf16"):
            raise InputError(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda", "auto") and not str(self.device).startswith("cuda:"):
            raise InputError(f"device must be cpu, cuda or auto, got {self.device!r}")


# ---------------------------------------------------------------------------------------------------
# Machine, devices, timing and memory
# ---------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but torch sees no CUDA device")
    return dev


def machine_info(device: torch.device) -> dict:
    """CPU model, cores, torch threads, GPU name, versions and load: what the absolute figures mean."""
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if m:
            cpu = m.group(1).strip()
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    import timm

    info = {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "memory_gib": mem_gib,
            "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "platform": platform.platform(), "device": str(device), "gpu": None,
            "loadavg_start": _loadavg()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        info["cuda"] = torch.version.cuda
    return info


def _loadavg() -> Optional[list]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict, device: torch.device, reps: int, warmup: int = 1) -> dict:
    """Time several variants interleaved: every repetition runs each once, the order rotated.

    Args:
        fns: ``{name: zero-argument callable}``.
        reps: timed repetitions per variant; warmup: untimed ones first.

    Returns:
        ``{name: [wall seconds per repetition]}``; the process CPU seconds of the same runs are in
        ``{"cpu:" + name: [...]}`` (less sensitive to other processes on a shared CPU).
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    _sync(device)
    times = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order = order[::-1]
        for n in order:
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    times.update({f"cpu:{n}": v for n, v in cpu.items()})
    return times


def summarise_times(times: dict, base: Optional[str] = None) -> dict:
    """Medians per variant and, against ``base``, the paired ratio and the ratio of medians.

    Args:
        times: output of :func:`time_interleaved`.

    Returns:
        ``{name: {"median_ms", "min_ms", "runs_ms", "cpu_median_ms", "ratio", "ratio_of_medians",
        "cpu_ratio"}}`` (ratios only when ``base`` is given; ``ratio`` is the median of the paired
        per-repetition wall-clock ratios, ``cpu_ratio`` the same for process CPU time).
    """
    def paired(a, b):
        return statistics.median([x / y for x, y in zip(a, b)]) if all(y > 0 for y in b) else math.nan

    out = {}
    for n, ts in times.items():
        if n.startswith("cpu:"):
            continue
        cs = times.get(f"cpu:{n}", [])
        d = {"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts),
             "runs_ms": [round(1e3 * t, 3) for t in ts]}
        if cs:
            d["cpu_median_ms"] = 1e3 * statistics.median(cs)
        if base is not None:
            d["ratio"] = paired(ts, times[base])
            d["ratio_of_medians"] = statistics.median(ts) / statistics.median(times[base])
            if cs:
                d["cpu_ratio"] = paired(cs, times[f"cpu:{base}"])
        out[n] = d
    return out


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of live tensors allocated during ``fn()`` above what was live when it started.

    CUDA: the caching allocator's peak. CPU: the running sum of ``torch.profiler`` allocation events
    (only tensors; Python objects and allocator slack are not counted). Whatever ``fn`` returns is
    alive at its end and counted. (No ``gc.collect`` here: it costs ~0.3 s with torch loaded; the
    sections collect once between models.)
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - start
        del out
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and str(e.device_type()).endswith("CPU")]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return int(peak)


@contextmanager
def _quiet_profiler() -> Iterator[None]:
    """Kineto prints start/stop lines on fd 2 for every profile on some builds; silence them."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# ---------------------------------------------------------------------------------------------------
# Models, the peer, FLOPs
# ---------------------------------------------------------------------------------------------------
def build(method: str, spec: BackboneSpec, device: torch.device, img_size: Optional[int] = None, seed: int = 0):
    """A model of ``method`` on ``spec`` with random weights, in eval mode, on ``device``."""
    from .models import build_model

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


# ---------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------
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
    from .recording import extract_attention

    model = build("linear", spec, ctx.device, seed=ctx.cfg.seed)
    x = ctx.images(ctx.cfg.batch, spec.img_size)
    fns = {"plain": ctx.infer(lambda: model(x)),
           "record": ctx.infer(lambda: extract_attention(model, x).cls["main"]),
           "timm_forward": ctx.infer(lambda: model.vit(x))}
    times = summarise_times(time_interleaved(fns, ctx.device, ctx.cfg.reps, ctx.cfg.warmup), base="plain")
    flops = analytic_forward_flops(model, x)
    counted = counted_flops(fns["plain"])
    counted_total = counted["total"] + (0 if counted["attention_counted"] else attention_flops(model, x))
    plain_s = times["plain"]["median_ms"] / 1e3
    out = {"backbone": spec.label(), "batch": ctx.cfg.batch, "tokens": _tokens(model, spec.img_size),
           "times": times, "overhead": times["record"]["ratio"], "forward_gflop": flops / 1e9,
           "forward_gflop_counted": counted_total / 1e9,
           "achieved_tflops": flops / plain_s / 1e12, "images_per_s_plain": ctx.cfg.batch / plain_s}
    if ctx.cfg.peak_tflops:
        out["peak_share"] = out["achieved_tflops"] / ctx.cfg.peak_tflops
    if ctx.cfg.profile:
        out["profile"] = profile_variants({"plain": fns["plain"], "record": fns["record"]}, ctx.device)
    return out


def bench_peer(ctx: _Ctx, spec: BackboneSpec) -> dict:
    """timm AttentionExtract vs this project: time, extra peak memory over the plain forward, agreement."""
    from .recording import extract_attention

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
    x1 = x[:1]
    fl = {}
    for n, m, passes in (("single", single, 1), ("toast", toast, 2), ("toast-lite", lite, 2)):
        c = counted_flops(ctx.infer(lambda m=m: m(x1)))
        fl[n] = c["total"] + (0 if c["attention_counted"] else passes * attention_flops(m, x1))
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
    from .methods import available_methods

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
    from .metrics import box_to_mask

    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(batch):
        bw, bh = rng.uniform(0.3, 0.7, size=2) * size
        x0, y0 = rng.uniform(0, size - bw), rng.uniform(0, size - bh)
        masks.append(box_to_mask((x0, y0, x0 + bw, y0 + bh), size, size))
    return masks


def analyse_batch_metrics(model, images: torch.Tensor, masks: list) -> dict:
    """Maps + per-map metrics of :mod:`toast_core.metrics`: ``energy_in_mask`` and ``pointing_game`` for
    every layer's CLS map of every image (one function call per map).

    Returns:
        ``{"energy": (L, B) float array, "pointing": (L, B) bool array}``.
    """
    from .analysis import default_tolerance
    from .metrics import energy_in_mask, pointing_game
    from .recording import extract_attention

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
    from .analysis import _stack_geometry, batch_map_metrics, image_geometry
    from .recording import extract_attention

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
    from .recording import extract_attention

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


# ---------------------------------------------------------------------------------------------------
# RSS cross-check in a fresh process
# ---------------------------------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else -1


def rss_peak_subprocess(spec: BackboneSpec, batch: int, variant: str, seed: int = 0,
                        timeout: float = 900) -> Optional[int]:
    """Peak RSS growth (bytes) of one variant (plain, ours, peer) run once in a fresh Python process.

    The child builds the model, runs the variant once to warm up, resets the high-water mark
    (``/proc/self/clear_refs``), runs it again and reports VmHWM − VmRSS. glibc is told to return
    large freed blocks to the system (fixed mmap threshold) so RSS tracks live memory.
    Returns None where /proc is not available or the child fails.
    """
    if not Path("/proc/self/clear_refs").exists():
        return None
    payload = json.dumps({"spec": asdict(spec), "batch": batch, "variant": variant, "seed": seed})
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    try:
        proc = subprocess.run([sys.executable, "-m", "toast_core.bench", "--rss-child", payload],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=str(Path(__file__).resolve().parents[1]))
        return int(json.loads(proc.stdout.strip().splitlines()[-1])["delta_bytes"])
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError, json.JSONDecodeError):
        return None


def _rss_child(payload: str) -> None:
    from .recording import extract_attention

    job = json.loads(payload)
    spec = BackboneSpec(job["spec"]["name"], job["spec"]["img_size"], job["spec"]["kwargs"])
    device = torch.device("cpu")
    model = build("linear", spec, device, seed=job["seed"])
    g = torch.Generator().manual_seed(job["seed"])
    x = torch.randn(job["batch"], 3, spec.img_size, spec.img_size, generator=g)
    if job["variant"] == "peer":
        peer = Peer(spec, device, source=model)
        fn = peer.cls_maps
    elif job["variant"] == "ours":
        def fn(images):
            return extract_attention(model, images).cls["main"]
    else:
        fn = model
    with torch.no_grad():
        fn(x)
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        out = fn(x)
        hwm = _status_kib("VmHWM")
    del out
    print(json.dumps({"delta_bytes": (hwm - before) * 1024}))


# ---------------------------------------------------------------------------------------------------
# Running everything, targets, outputs
# ---------------------------------------------------------------------------------------------------
def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print,
                  on_section: Optional[Callable[[dict], None]] = None) -> dict:
    """Run the selected sections and return every figure as a JSON-able dict.

    Args:
        cfg: what to run; log: progress lines; on_section: called with the partial results after
            every section (e.g. to write them, so a long run keeps what it measured).

    Returns:
        ``{"machine", "config", "command", "dtype", "sections": {name: [per-backbone dicts] or dict},
        "targets": [...], "elapsed_s"}``.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    dtype = cfg.dtype or ("bf16" if device.type == "cuda" else "fp32")
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _run(cfg, device, dtype, log, on_section)
    finally:
        torch.set_num_threads(old_threads)


def _run(cfg: BenchConfig, device: torch.device, dtype: str, log: Callable[[str], None],
         on_section: Optional[Callable[[dict], None]]) -> dict:
    ctx = _Ctx(cfg, device, dtype)
    t0 = time.perf_counter()
    results = {"machine": machine_info(device), "command": cfg.command, "dtype": dtype,
               "config": _config_dict(cfg), "sections": {}}
    per_spec = {"record": bench_record, "peer": bench_peer, "toast": bench_toast, "train": bench_train}
    for name in SECTIONS:
        if name not in cfg.sections:
            continue
        t_sec = time.perf_counter()
        if name in per_spec:
            results["sections"][name] = []
            for spec in cfg.specs:
                log(f"[bench] {name}: {spec.label()} ...")
                results["sections"][name].append(per_spec[name](ctx, spec))
                gc.collect()
        elif name == "analysis":
            log(f"[bench] analysis: {cfg.specs[0].label()} ...")
            results["sections"][name] = bench_analysis(ctx, cfg.specs[0])
        elif name == "scaling":
            log(f"[bench] scaling: {cfg.specs[0].name} sizes {list(cfg.sizes)} x batches {list(cfg.batches)} ...")
            results["sections"][name] = bench_scaling(ctx, cfg.specs[0])
        results.setdefault("section_seconds", {})[name] = time.perf_counter() - t_sec
        results["machine"]["loadavg_end"] = _loadavg()
        results["targets"] = evaluate_targets(results, device.type)
        results["elapsed_s"] = time.perf_counter() - t0
        if on_section is not None:
            on_section(results)
    results["machine"]["loadavg_end"] = _loadavg()
    results["targets"] = evaluate_targets(results, device.type)
    results["elapsed_s"] = time.perf_counter() - t0
    return results


def _config_dict(cfg: BenchConfig) -> dict:
    d = asdict(cfg)
    d["specs"] = [asdict(s) for s in cfg.specs]
    return d


ANALYSIS_LABELS = {"analysis": "toast_core.analysis, all layers",
                   "metrics_per_map": "metrics.py per map, all layers"}


def timing_basis(results: dict) -> str:
    """Which paired ratio decides a timing target: ``"cpu"`` (process CPU time) on a CPU run with one
    torch thread — there it is the work done, while wall-clock time also measures what other processes
    on a shared machine do — else ``"wall"`` (CUDA, or several threads whose spinning CPU time counts)."""
    m = results["machine"]
    return "cpu" if m["device"] == "cpu" and m.get("torch_threads") == 1 else "wall"


def evaluate_targets(results: dict, device_type: str) -> list:
    """The issue's targets, each ``{"target", "backbone", "value", "value_wall", "value_cpu", "basis",
    "limit", "direction", "met"}``.

    ``value`` (which decides ``met``) is the paired ratio of the :func:`timing_basis`; ``value_wall`` and
    ``value_cpu`` are both ratios (``value_cpu`` None on CUDA, where CPU time means nothing).
    """
    s = results["sections"]
    out = []
    use_cpu = device_type == "cpu"
    basis = timing_basis(results)

    def add(target, backbone, value, limit, higher_is_better=False, value_cpu=None, memory=False):
        value_cpu = value_cpu if use_cpu else None
        wall = None if memory else value
        if basis == "cpu" and value_cpu is not None:
            value = value_cpu
        met = None if value is None or (isinstance(value, float) and math.isnan(value)) else \
            bool(value >= limit if higher_is_better else value <= limit)
        out.append({"target": target, "backbone": backbone, "value": value, "value_wall": wall,
                    "value_cpu": value_cpu, "basis": "memory" if memory else basis,
                    "limit": limit, "direction": ">=" if higher_is_better else "<=", "met": met})

    rec_limit = 1.15 if device_type == "cuda" else 1.10
    for r in s.get("record", []):
        add(f"recording overhead vs plain forward ({device_type}, batch {r['batch']})", r["backbone"],
            r["overhead"], rec_limit, value_cpu=r["times"]["record"].get("cpu_ratio"))
    for r in s.get("peer", []):
        add("time vs timm AttentionExtract, fx (ours / peer)", r["backbone"], r["time_ratio"], 1.0,
            value_cpu=r["times"]["ours"].get("cpu_ratio"))
        add("time vs timm AttentionExtract, hooks (ours / peer)", r["backbone"], r["time_ratio_vs_hooks"], 1.0,
            value_cpu=r.get("cpu_ratio_vs_hooks"))
        add("extra peak memory vs AttentionExtract (ours / peer)", r["backbone"], r["memory_ratio"], 0.25, memory=True)
    for r in s.get("toast", []):
        add("TOAST inference vs single pass", r["backbone"], r["ratio"], 2.2,
            value_cpu=r["times"]["toast"].get("cpu_ratio"))
    for r in s.get("train", []):
        add("TOAST training step vs full fine-tuning", r["backbone"], r["ratios"].get("toast"), 1.3,
            value_cpu=r["times"].get("toast", {}).get("cpu_ratio"))
    a = s.get("analysis")
    if a:
        for n, v in a["throughput_ratio"].items():
            add(f"batch analysis throughput vs plain inference ({ANALYSIS_LABELS.get(n, n)})", a["backbone"], v,
                0.8, higher_is_better=True, value_cpu=a.get("cpu_throughput_ratio", {}).get(n))
    return out


def write_outputs(results: dict, out_dir, plot: bool = True) -> dict:
    """Write ``bench.json``, ``bench.md`` and (with a scaling section) ``scaling.png`` into ``out_dir``.

    Returns:
        ``{"json": path, "markdown": path, "plot": path or None}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "markdown": out / "bench.md", "plot": None}
    paths["json"].write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    if plot and results["sections"].get("scaling"):
        try:
            plot_scaling(results["sections"]["scaling"], out / "scaling.png", results["machine"],
                     use_cpu_time=timing_basis(results) == "cpu")
            paths["plot"] = out / "scaling.png"
        except ImportError as e:  # matplotlib missing (a bare GPU image): the tables still stand
            print(f"[bench] no plot: {e}", file=sys.stderr)
    paths["markdown"].write_text(to_markdown(results, plot_name=paths["plot"].name if paths["plot"] else None))
    return {k: (str(v) if v is not None else None) for k, v in paths.items()}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def plot_scaling(scaling: dict, path, machine: Optional[dict] = None, use_cpu_time: bool = False) -> None:
    """Two panels: time per image and memory vs token count, one line per batch size.

    Args:
        use_cpu_time: plot process CPU time instead of wall-clock time (single-thread CPU runs).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = scaling["rows"]
    batches = sorted({r["batch"] for r in rows})
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, b in enumerate(batches):
        rs = sorted((r for r in rows if r["batch"] == b), key=lambda r: r["tokens"])
        n = [r["tokens"] for r in rs]
        c = colors[i % len(colors)]
        cpu = use_cpu_time and all(r.get("plain_cpu_ms") for r in rs)
        pk, rk = ("plain_cpu_ms", "record_cpu_ms") if cpu else ("plain_ms", "record_ms")
        ax_t.plot(n, [r[pk] / b for r in rs], "-o", color=c, label=f"plain, batch {b}")
        ax_t.plot(n, [r[rk] / b for r in rs], "--s", color=c, label=f"recording, batch {b}")
        ax_m.plot(n, [max(r["plain_peak_bytes"], 1) / MiB for r in rs], "-o", color=c,
                  label=f"plain forward peak, b{b}")
        ax_m.plot(n, [max(r["record_extra_bytes"], 1) / MiB for r in rs], "--s", color=c,
                  label=f"recording extra, b{b}")
        ax_m.plot(n, [max(r["peer_extra_bytes"], 1) / MiB for r in rs], ":^", color=c,
                  label=f"AttentionExtract extra, b{b}")
    kind = "CPU time" if use_cpu_time and all(r.get("plain_cpu_ms") for r in rows) else "wall-clock time"
    ax_t.set(xlabel="tokens per image", ylabel="ms per image", title=f"{kind} per image (median)")
    ax_m.set(xlabel="tokens per image", ylabel="MiB (log scale)", title="peak tensor memory", yscale="log")
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, ncol=1)
    where = ""
    if machine:
        where = machine.get("gpu") or f"{machine.get('cpu')}, {machine.get('usable_cores')} cores, " \
                                      f"{machine.get('torch_threads')} torch thread(s)"
    fig.suptitle(f"{scaling['backbone']}: scaling with image size and batch ({where})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _mb(b) -> str:
    return "—" if b is None else f"{b / MiB:,.1f}"


def _r(v, nd=2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _ratio_cell(t: dict, nd: int = 3) -> str:
    """``wall (cpu)`` paired ratios of one variant."""
    cpu = t.get("cpu_ratio")
    return f"{_r(t.get('ratio'), nd)}" + (f" ({_r(cpu, nd)})" if cpu is not None else "")


def _ms(t: dict, nd: int = 0) -> str:
    """``wall (cpu)`` median milliseconds of one variant."""
    cpu = t.get("cpu_median_ms")
    return _r(t["median_ms"], nd) + (f" ({_r(cpu, nd)})" if cpu is not None else "")


def to_markdown(results: dict, plot_name: Optional[str] = None) -> str:
    """The results as markdown tables (the figures of docs/BENCHMARKS.md)."""
    m, s = results["machine"], results["sections"]
    c = results["config"]
    lines = ["## Machine and method", "",
             f"- CPU: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m.get('memory_gib')} GiB RAM; "
             f"torch threads {m['torch_threads']} (interop {m['torch_interop_threads']})",
             f"- GPU: {m.get('gpu') or 'none'}; device `{m['device']}`, precision {results['dtype']}",
             f"- Python {m['python']}, torch {m['torch']}, timm {m['timm']}; {m['platform']}",
             f"- load average (1, 5, 15 min) at start {m.get('loadavg_start')}, at end {m.get('loadavg_end')}",
             f"- command: `{results.get('command') or 'python -m toast_core bench'}`",
             f"- wall time {results.get('elapsed_s', 0):.0f} s", "",
             f"Medians of {c['reps']} interleaved repetitions (training steps: {c['train_reps']}, scaling grid: "
             f"{c['scaling_reps']}) after {c['warmup']} warm-up. Times are milliseconds of wall-clock time, in "
             "brackets process CPU time; a ratio is the median of the per-repetition paired ratios of wall-clock "
             "time, in brackets the same for CPU time"
             + (" (less sensitive to other processes on a shared CPU)." if m["device"] == "cpu" else "."), ""]
    if results.get("targets"):
        basis = timing_basis(results)
        lines += ["## Targets", "",
                  f"Timing targets are decided by the {'process CPU time' if basis == 'cpu' else 'wall-clock'} "
                  "paired ratio" + (" (one torch thread on a shared CPU: the work done; wall-clock also "
                                    "measures the other processes)." if basis == "cpu" else "."), "",
                  "| target | backbone | decides | wall-clock | CPU time | limit | met |",
                  "|---|---|---|---|---|---|---|"]
        for t in results["targets"]:
            met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
            lines.append(f"| {t['target']} | {t['backbone']} | {_r(t['value'], 3)} | {_r(t.get('value_wall', t['value']), 3)} | "
                         f"{_r(t.get('value_cpu'), 3)} | {t['direction']} {t['limit']} | {met} |")
        lines.append("")
    if s.get("record"):
        lines += ["## 1. Recording all layers' CLS maps vs the plain forward (fused attention)", "",
                  "| backbone | batch | tokens | plain ms | recording ms | recording / plain | timm forward ms | "
                  "timm forward / plain (same work) | GFLOP/image | achieved TFLOP/s | images/s (plain) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["record"]:
            t = r["times"]
            share = f" ({100 * r['peak_share']:.1f} % of peak)" if "peak_share" in r else ""
            lines.append(f"| {r['backbone']} | {r['batch']} | {r['tokens']} | {_ms(t['plain'])} | "
                         f"{_ms(t['record'])} | {_ratio_cell(t['record'])} | {_ms(t['timm_forward'])} | "
                         f"{_ratio_cell(t['timm_forward'])} | {_r(r['forward_gflop'] / r['batch'], 2)} | "
                         f"{_r(r['achieved_tflops'], 4)}{share} | {_r(r['images_per_s_plain'], 2)} |")
        for r in s["record"]:
            prof = r.get("profile")
            if not prof:
                continue
            pl, rc = prof["plain"], prof["record"]
            lines += ["", f"Profile of {r['backbone']} (torch.profiler, per call; {pl['op_kind']}):", "",
                      "| variant | host time to issue ms | operator time ms | ATen calls |", "|---|---|---|---|"]
            for n, d in prof.items():
                lines.append(f"| {n} | {_r(d['issue_ms'], 3)} | {_r(d['op_ms'], 3)} | {d['aten_calls']:.0f} |")
            pl_top = {k: v for k, v, _ in pl["top"]}
            extra = [f"`{k}` {v:.3f} ms" + (f" (plain {pl_top[k]:.3f})" if k in pl_top else "")
                     for k, v, _ in rc["top"][:8]]
            lines += ["", "Costliest operators when recording: " + "; ".join(extra) + "."]
        lines += ["", "timm forward = `model.vit(x)`, timm's own forward of the same modules: the same work as "
                  "the plain forward, so its ratio shows how much the timing noise alone moves a ratio. "
                  "GFLOP counted analytically (2·weights·tokens + 4·N²·C per block); FlopCounterMode "
                  f"(+ attention where it cannot see SDPA) gives {_r(s['record'][0]['forward_gflop_counted'] / s['record'][0]['batch'], 2)} "
                  f"for the first backbone.", ""]
    if s.get("peer"):
        lines += ["## 2. This project vs timm `AttentionExtract` (same maps)", "",
                  "| backbone | batch | ours ms | peer fx ms | peer hooks ms | ours / fx | ours / hooks | "
                  "plain peak MiB | extra: ours | extra: fx | extra: hooks | memory ours / fx | "
                  "RSS extra ours / fx MiB | max abs diff |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["peer"]:
            t, pk, ex = r["times"], r["peak_bytes"], r["extra_bytes"]
            rss = r.get("rss_extra_bytes")
            rss_s = f"{_mb(rss['ours'])} / {_mb(rss['peer'])}" if rss else "—"
            hooks_cpu = f" ({_r(r.get('cpu_ratio_vs_hooks'), 3)})" if r.get("cpu_ratio_vs_hooks") else ""
            lines.append(f"| {r['backbone']} | {r['batch']} | {_ms(t['ours'])} | {_ms(t['peer'])} | "
                         f"{_ms(t['peer_hooks'])} | {_ratio_cell(t['ours'])} | {_r(r['time_ratio_vs_hooks'], 3)}{hooks_cpu} | "
                         f"{_mb(pk['plain'])} | {_mb(ex['ours'])} | {_mb(ex['peer'])} | {_mb(ex.get('peer_hooks'))} | "
                         f"{_r(r['memory_ratio'], 4)} | {rss_s} | {r['maps_max_abs_diff']:.1e} |")
        lines += ["", f"Memory: {s['peer'][0]['memory_method']}; extra = peak of the variant − peak of the plain "
                  "fused forward of the same model and batch (MiB). The fx peer is AttentionExtract's default: "
                  "its traced graph drops what no softmax output depends on (the last block's MLP, the head), so "
                  "it returns maps without a prediction; the hooks peer and this project run the whole forward.", ""]
    if s.get("toast"):
        lines += ["## 3. TOAST inference vs a single pass of the same backbone", "",
                  "| backbone | batch | single ms | TOAST ms | TOAST-Lite ms | TOAST / single | Lite / single | "
                  "FLOP ratio TOAST | FLOP ratio Lite |", "|---|---|---|---|---|---|---|---|---|"]
        for r in s["toast"]:
            t = r["times"]
            lines.append(f"| {r['backbone']} | {r['batch']} | {_ms(t['single'])} | {_ms(t['toast'])} | "
                         f"{_ms(t['toast-lite'])} | {_ratio_cell(t['toast'])} | {_ratio_cell(t['toast-lite'])} | "
                         f"{_r(r['flop_ratio'], 3)} | {_r(r['flop_ratio_lite'], 3)} |")
        lines.append("")
    if s.get("train"):
        lines += ["## 4. One training step (forward, backward, AdamW) vs full fine-tuning", ""]
        for r in s["train"]:
            lines += [f"{r['backbone']}, batch {r['batch']}:", "",
                      "| method | trainable params | step ms | vs full fine-tuning |", "|---|---|---|---|"]
            for n, t in r["times"].items():
                tp = r["trainable"].get(n.split(":")[0])
                ratio = _ratio_cell(t) if n != "finetune" else "1"
                lines.append(f"| {n} | {tp:,} | {_ms(t)} | {ratio} |")
            lines.append("")
    if s.get("analysis"):
        a = s["analysis"]
        lines += ["## 5. Batch analysis throughput", "",
                  f"{a['backbone']}, batch {a['batch']}, random box masks; maps of every layer, then "
                  "`toast_core.analysis` (per-image geometry + energy, pointing game, IoU, AUC, entropy of all "
                  "maps at once) or the per-map functions of `toast_core/metrics.py` (energy_in_mask + pointing_game "
                  "per map).", "",
                  "| variant | ms per batch | images/s | throughput vs plain inference |", "|---|---|---|---|"]
        for n, t in a["times"].items():
            ratio = a["throughput_ratio"].get(n, 1.0)
            cpu = a.get("cpu_throughput_ratio", {}).get(n)
            cell = _r(ratio, 3) + (f" ({_r(cpu, 3)})" if cpu is not None else "")
            lines.append(f"| {ANALYSIS_LABELS.get(n, n)} | {_ms(t)} | {_r(a['images_per_s'][n], 2)} | {cell} |")
        lines += ["", f"Both metric paths agree (energy max abs diff {a['energy_paths_max_abs_diff']:.1e}, "
                  f"pointing game identical: {a['pointing_paths_agree']}).", ""]
    if s.get("scaling"):
        sc = s["scaling"]
        lines += [f"## 6. Scaling with image size and batch ({sc['backbone']})", "",
                  "| px | batch | tokens | plain ms | recording ms | overhead | plain peak MiB | recording extra MiB | "
                  "AttentionExtract extra MiB |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sc["rows"]:
            kind = "" if r["peer_extra_kind"] == "measured" else " (est.)"
            cpu = f" ({_r(r['cpu_ratio'], 3)})" if r.get("cpu_ratio") is not None else ""
            pc = f" ({_r(r['plain_cpu_ms'], 0)})" if r.get("plain_cpu_ms") is not None else ""
            rc = f" ({_r(r['record_cpu_ms'], 0)})" if r.get("record_cpu_ms") is not None else ""
            lines.append(f"| {r['img_size']} | {r['batch']} | {r['tokens']} | {_r(r['plain_ms'], 0)}{pc} | "
                         f"{_r(r['record_ms'], 0)}{rc} | {_r(r['ratio'], 3)}{cpu} | {_mb(r['plain_peak_bytes'])} | "
                         f"{_mb(r['record_extra_bytes'])} | {_mb(r['peer_extra_bytes'])}{kind} |")
        lines += ["", "(est.) = L·B·H·N²·4 bytes, the full matrices AttentionExtract keeps, where measuring would "
                  "allocate more than the configured limit.", ""]
        if plot_name:
            lines += [f"![scaling]({plot_name})", ""]
    return "\n".join(lines)


def format_summary(results: dict) -> str:
    """A short plain-text table for the terminal: every target and its measured value."""
    m = results["machine"]
    rows = [f"machine: {m.get('gpu') or m['cpu']} | {m['usable_cores']} cores | torch threads {m['torch_threads']} "
            f"| {results['dtype']} | load {m.get('loadavg_start')} -> {m.get('loadavg_end')}",
            f"timing targets decided by {timing_basis(results)} time",
            f"  {'target':<58} {'backbone':<30} {'wall':>7} {'cpu':>7}  limit"]
    for t in results.get("targets", []):
        met = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        shown = t["value"] if t.get("basis") == "memory" else t.get("value_wall", t["value"])
        rows.append(f"  {t['target'][:58]:<58} {t['backbone'][:30]:<30} {_r(shown, 3):>7} "
                    f"{_r(t.get('value_cpu'), 3):>7}  {t['direction']} {t['limit']:<5} {met}")
    return "\n".join(rows)


if __name__ == "__main__":  # the RSS child: python -m toast_core.bench --rss-child '<json>'
    if len(sys.argv) == 3 and sys.argv[1] == "--rss-child":
        _rss_child(sys.argv[2])
    else:
        print("internal entry point; use `python -m toast_core bench`", file=sys.stderr)
        sys.exit(2)
