"""Running the selected sections, and the targets of the performance issue evaluated on the results."""
from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict
from typing import Callable, Optional

import torch

from .config import BenchConfig, SECTIONS
from .sections import _Ctx, bench_analysis, bench_peer, bench_record, bench_scaling, bench_toast, bench_train
from .timing import _loadavg, machine_info, resolve_device

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
        if "record_cls" in r["times"]:  # older runs recorded CLS maps and token norms together
            add(f"recording overhead vs plain forward, CLS maps ({device_type}, batch {r['batch']})",
                r["backbone"], r["overhead_cls"], rec_limit, value_cpu=r["times"]["record_cls"].get("cpu_ratio"))
        add(f"recording overhead vs plain forward, CLS maps + token norms ({device_type}, batch {r['batch']})",
            r["backbone"], r["overhead"], rec_limit, value_cpu=r["times"]["record"].get("cpu_ratio"))
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
