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

The package: ``config`` (what to run), ``timing`` (clocks, profiler, memory), ``workload`` (models, the
peer, FLOPs), ``sections`` (one function per section), ``rss`` (fresh-process memory cross-check),
``runner`` (run + targets) and ``report`` (JSON, Markdown, plot).

Usage::

    from toast_core.bench import BenchConfig, run_benchmark, write_outputs
    results = run_benchmark(BenchConfig(quick=True))
    write_outputs(results, "bench_out")     # bench.json, bench.md, scaling.png
"""
from .config import DEFAULT_SPECS, NUM_CLASSES, QUICK_SPECS, SECTIONS, BackboneSpec, BenchConfig
from .report import format_summary, plot_scaling, to_markdown, write_outputs
from .runner import evaluate_targets, run_benchmark, timing_basis
from .sections import (analyse_batch_metrics, analyse_batch_vectorised, bench_analysis, bench_peer, bench_record,
                       bench_scaling, bench_toast, bench_train, random_box_masks)
from .timing import machine_info, peak_memory, resolve_device, summarise_times, time_interleaved
from .workload import (Peer, analytic_forward_flops, attention_flops, build, counted_flops, fused_attn,
                       peer_matrix_bytes, profile_variants)

__all__ = [
    "DEFAULT_SPECS", "NUM_CLASSES", "QUICK_SPECS", "SECTIONS", "BackboneSpec", "BenchConfig", "machine_info",
    "resolve_device", "format_summary", "plot_scaling", "to_markdown", "write_outputs", "evaluate_targets",
    "run_benchmark", "timing_basis", "analyse_batch_metrics", "analyse_batch_vectorised", "bench_analysis",
    "bench_peer", "bench_record", "bench_scaling", "bench_toast", "bench_train", "random_box_masks",
    "peak_memory", "summarise_times", "time_interleaved", "Peer", "analytic_forward_flops", "attention_flops",
    "build", "counted_flops", "fused_attn", "peer_matrix_bytes", "profile_variants",
]
