"""The machine, and how a call is timed, profiled and its peak memory measured, side by side."""
from __future__ import annotations

import math
import os
import platform
import re
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from ..device import autocast, resolve_device  # noqa: F401 (resolve_device: the one resolver, used by the bench)

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
    return autocast(device, dtype == "bf16")
