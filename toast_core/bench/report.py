"""The outputs of a run: bench.json, bench.md (tables) and scaling.png."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from .config import MiB
from .runner import ANALYSIS_LABELS, timing_basis

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
    m, c = results["machine"], results["config"]
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
    for section in (_targets_section, _recording_section, _peer_section, _toast_section, _training_section,
                    _analysis_section):
        lines += section(results)
    lines += _scaling_section(results, plot_name)
    return "\n".join(lines)


def _targets_section(results: dict) -> list[str]:
    lines = []
    if not results.get("targets"):
        return lines
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
    return lines


def _recording_section(results: dict) -> list[str]:
    s, lines = results["sections"], []
    if not s.get("record"):
        return lines
    lines += ["## 1. Recording all layers' CLS maps vs the plain forward (fused attention)", "",
              "| backbone | batch | tokens | plain ms | recording ms | recording / plain | CLS maps only / plain | "
              "timm forward ms | timm forward / plain (same work) | GFLOP/image | achieved TFLOP/s | images/s (plain) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["record"]:
        t = r["times"]
        share = f" ({100 * r['peak_share']:.1f} % of peak)" if "peak_share" in r else ""
        lines.append(f"| {r['backbone']} | {r['batch']} | {r['tokens']} | {_ms(t['plain'])} | "
                     f"{_ms(t['record'])} | {_ratio_cell(t['record'])} | "
                     f"{_ratio_cell(t['record_cls']) if 'record_cls' in t else '—'} | {_ms(t['timm_forward'])} | "
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
    lines += ["", "recording = `extract_attention(model, x)`: per-head CLS rows of every layer (head-averaged maps, "
              "prefix mass) and every block's output-token norms; CLS maps only = the same with "
              "`token_norm=False`. "
              "timm forward = `model.vit(x)`, timm's own forward of the same modules: the same work as "
              "the plain forward, so its ratio shows how much the timing noise alone moves a ratio. "
              "GFLOP counted analytically (2·weights·tokens + 4·N²·C per block); FlopCounterMode "
              f"(+ attention where it cannot see SDPA) gives {_r(s['record'][0]['forward_gflop_counted'] / s['record'][0]['batch'], 2)} "
              f"for the first backbone.", ""]
    return lines


def _peer_section(results: dict) -> list[str]:
    s, lines = results["sections"], []
    if not s.get("peer"):
        return lines
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
    return lines


def _toast_section(results: dict) -> list[str]:
    s, lines = results["sections"], []
    if not s.get("toast"):
        return lines
    lines += ["## 3. TOAST inference vs a single pass of the same backbone", "",
              "| backbone | batch | single ms | TOAST ms | TOAST-Lite ms | TOAST / single | Lite / single | "
              "FLOP ratio TOAST | FLOP ratio Lite |", "|---|---|---|---|---|---|---|---|---|"]
    for r in s["toast"]:
        t = r["times"]
        lines.append(f"| {r['backbone']} | {r['batch']} | {_ms(t['single'])} | {_ms(t['toast'])} | "
                     f"{_ms(t['toast-lite'])} | {_ratio_cell(t['toast'])} | {_ratio_cell(t['toast-lite'])} | "
                     f"{_r(r['flop_ratio'], 3)} | {_r(r['flop_ratio_lite'], 3)} |")
    lines.append("")
    return lines


def _training_section(results: dict) -> list[str]:
    s, lines = results["sections"], []
    if not s.get("train"):
        return lines
    lines += ["## 4. One training step (forward, backward, AdamW) vs full fine-tuning", ""]
    for r in s["train"]:
        lines += [f"{r['backbone']}, batch {r['batch']}:", "",
                  "| method | trainable params | step ms | vs full fine-tuning |", "|---|---|---|---|"]
        for n, t in r["times"].items():
            tp = r["trainable"].get(n.split(":")[0])
            ratio = _ratio_cell(t) if n != "finetune" else "1"
            lines.append(f"| {n} | {tp:,} | {_ms(t)} | {ratio} |")
        lines.append("")
    return lines


def _analysis_section(results: dict) -> list[str]:
    s, lines = results["sections"], []
    if not s.get("analysis"):
        return lines
    a = s["analysis"]
    lines += ["## 5. Batch analysis throughput", "",
              f"{a['backbone']}, batch {a['batch']}, random box masks; maps of every layer, then "
              "`toast_core.analysis` (per-image geometry + energy, pointing game, IoU, AUC, entropy of all "
              "maps at once) or the per-map functions of `toast_core/analysis/metrics.py` (energy_in_mask + pointing_game "
              "per map).", "",
              "| variant | ms per batch | images/s | throughput vs plain inference |", "|---|---|---|---|"]
    for n, t in a["times"].items():
        ratio = a["throughput_ratio"].get(n, 1.0)
        cpu = a.get("cpu_throughput_ratio", {}).get(n)
        cell = _r(ratio, 3) + (f" ({_r(cpu, 3)})" if cpu is not None else "")
        lines.append(f"| {ANALYSIS_LABELS.get(n, n)} | {_ms(t)} | {_r(a['images_per_s'][n], 2)} | {cell} |")
    lines += ["", f"Both metric paths agree (energy max abs diff {a['energy_paths_max_abs_diff']:.1e}, "
              f"pointing game identical: {a['pointing_paths_agree']}).", ""]
    return lines


def _scaling_section(results: dict, plot_name: Optional[str]) -> list[str]:
    s, lines = results["sections"], []
    if not s.get("scaling"):
        return lines
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
    return lines


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
