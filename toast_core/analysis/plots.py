"""Plots of analysis rows (bare matplotlib Figures: no pyplot, safe in a server thread) and the report."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..cache import atomic_write_bytes
from ..errors import InputError
from .metrics import bootstrap_ci

from .engine import _records
from .tables import _final_pass, layer_average, summarise, summary_markdown, write_rows_csv, write_table_csv

_LABELS = {"energy_target": "energy on task object", "energy_distractors": "energy on distractors",
           "energy_background": "energy on background", "pointing_hit": "pointing-game hit rate",
           "iou": "IoU (thresholded map)", "auc": "AUC (map as mask detector)", "entropy": "normalised entropy",
           "prefix_share": "CLS/prefix share", "prompt_share": "prompt share", "part_hit": "part-hit rate",
           "correct": "accuracy"}


def _series(rows, metric: str, kind: str, n_boot: int) -> dict[tuple[str, str], tuple[list, np.ndarray]]:
    """(method, pass) → (layers, (3, n_layers) mean/lo/hi)."""
    per: dict[tuple, dict[int, list]] = {}
    for r in _records(rows):
        if r["kind"] == kind:
            per.setdefault((r["method"], r["pass"]), {}).setdefault(r["layer"], []).append(r[metric])
    out = {}
    for key, by_layer in per.items():
        layers = sorted(by_layer)
        out[key] = (layers, np.array([bootstrap_ci(by_layer[l], n_boot) for l in layers]).T)
    return out


def plot_metric_vs_layer(rows, metrics: str | Sequence[str] = ("energy_target", "energy_distractors"),
                         kind: str = "cls", n_boot: int = 500, title: Optional[str] = None):
    """One panel per metric: its mean (95% CI band) against the layer, one line per method.

    The final pass of each method is drawn solid; TOAST's bottom-up pass dashed.
    Returns: a matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    n_cols = min(2, len(metrics))  # two panels a row: the text stays readable when the PNG is shown narrow
    n_rows = -(-len(metrics) // n_cols)
    fig = Figure(figsize=(2.9 * n_cols + 1.5, 2.4 * n_rows + 0.4), layout="constrained")
    grid = fig.subplots(n_rows, n_cols, squeeze=False)
    axes = grid.ravel()[:len(metrics)]
    for ax in grid.ravel()[len(metrics):]:
        ax.set_visible(False)
    colours = {}
    for ax, metric in zip(axes, metrics):
        series = _series(rows, metric, kind, n_boot)
        if not series:
            raise InputError(f"no rows of map kind '{kind}'")
        finals = {m: _final_pass(p for (mm, p) in series if mm == m) for m, _ in series}
        for (method, pass_name), (layers, stats) in series.items():
            if method not in colours:
                colours[method] = f"C{len(colours) % 10}"
            dashed = pass_name != finals[method]
            label = method if not dashed else f"{method} ({pass_name})"
            shown = [int(layer) + 1 for layer in layers]  # counted from 1, as everywhere in the app
            ax.plot(shown, stats[0], "--" if dashed else "-", color=colours[method], marker="o", ms=3,
                    lw=1.2 if dashed else 1.8, label=label)
            if not dashed:
                ax.fill_between(shown, stats[1], stats[2], color=colours[method], alpha=0.15, lw=0)
        ax.set_xlabel("layer (1 = nearest the pixels)", fontsize=9)
        ax.set_ylabel(_LABELS.get(metric, metric), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="outside right upper")
    fig.suptitle(title or f"{kind} maps: metric vs layer (mean, 95% CI)", fontsize=10)
    return fig


def plot_accuracy_vs_energy(rows, kind: str = "cls", layer: Optional[int] = None, metric: str = "energy_target",
                            n_boot: int = 500, title: Optional[str] = None):
    """Accuracy against the mean energy on the task object, one point per method (95% CI bars).

    Args: layer: the layer whose maps give the energy (default: the last analysed one).
    Returns: a matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    recs = [r for r in _records(rows) if r["kind"] == kind]
    if not recs:
        raise InputError(f"no rows of map kind '{kind}'")
    fig = Figure(figsize=(4.8, 3.8), layout="constrained")
    ax = fig.subplots()
    methods = list(dict.fromkeys(r["method"] for r in recs))
    for i, method in enumerate(methods):
        rs = [r for r in recs if r["method"] == method]
        final = _final_pass(r["pass"] for r in rs)
        lay = max(r["layer"] for r in rs) if layer is None else layer
        sel = [r for r in rs if r["pass"] == final and r["layer"] == lay]
        if not sel:
            continue
        x, y = bootstrap_ci([r[metric] for r in sel], n_boot), bootstrap_ci([r["correct"] for r in sel], n_boot)
        ax.errorbar(x[0], y[0], xerr=[[x[0] - x[1]], [x[2] - x[0]]], yerr=[[y[0] - y[1]], [y[2] - y[0]]],
                    fmt="o", color=f"C{i % 10}", capsize=3, label=method)
    # names in the legend beside the plot: labels next to the points overlapped where methods agree
    ax.set_xlabel(f"{_LABELS.get(metric, metric)} ({kind}, layer {'last' if layer is None else layer + 1})",
                  fontsize=9)
    ax.set_ylabel("accuracy", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="outside right upper")
    fig.suptitle(title or "accuracy vs attention on the task object (95% CI)", fontsize=10)
    return fig


_KIND_COLOURS = [f"C{i}" for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]  # tab10 without its grey (random is grey)


def plot_faithfulness_ranking(table, title: Optional[str] = None):
    """Deletion AUC (lower is better) and insertion AUC (higher is better) of every map kind, grouped by
    method, with 95 % CI bars; ``table`` from :func:`~toast_core.analysis.faithfulness.ranking_table`.

    Returns: a matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    from .faithfulness import available_kinds

    if not table:
        raise InputError("no faithfulness ranking to plot")
    methods = list(dict.fromkeys(t["method"] for t in table))
    present = list(dict.fromkeys(t["kind"] for t in table))
    kinds = [k for k in available_kinds() if k in present] + [k for k in present if k not in available_kinds()]
    cell = {(t["method"], t["kind"]): t for t in table}
    fig = Figure(figsize=(min(14.0, 2.5 + 0.2 * len(methods) * len(kinds)), 6.0), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    width = 0.8 / len(kinds)
    x = np.arange(len(methods))
    for ax, (metric, label) in zip(axes, (("deletion_auc", "deletion AUC (lower = more faithful)"),
                                          ("insertion_auc", "insertion AUC (higher = more faithful)"))):
        for k, kind in enumerate(kinds):
            vals = np.array([cell[(m, kind)][metric] if (m, kind) in cell else (np.nan,) * 3 for m in methods])
            err = np.abs(vals[:, 1:].T - vals[:, 0])
            ax.bar(x + (k - (len(kinds) - 1) / 2) * width, vals[:, 0], width, yerr=err, capsize=2,
                   color="0.75" if kind == "random" else _KIND_COLOURS[k % len(_KIND_COLOURS)], label=kind,
                   hatch="//" if kind == "random" else None, error_kw=dict(lw=0.8))
        ax.set_xticks(x, methods, fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right upper", title="map kind", title_fontsize=7)
    fig.suptitle(title or "Which map is faithful? deletion / insertion AUC per method and map kind (mean, 95% CI)",
                 fontsize=10)
    return fig


def save_figure(fig, out_dir: str | os.PathLike, stem: str, dpi: int = 200) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` (TrueType fonts embedded) into ``out_dir``."""
    from ..viz.export import figure_bytes

    paths = []
    for fmt in ("png", "pdf"):
        p = Path(out_dir) / f"{stem}.{fmt}"
        atomic_write_bytes(p, figure_bytes(fig, fmt, dpi=dpi))
        paths.append(p)
    return paths


def write_report(rows, out_dir: str | os.PathLike, title: str = "Attention analysis",
                 meta: Optional[dict] = None, n_boot: int = 1000, faithfulness_rows: Optional[Sequence[dict]] = None,
                 faithfulness_steps: Optional[int] = None) -> dict[str, list[Path]]:
    """Write ``rows.csv``, ``summary.csv``, ``layer_average.csv``, ``summary.md``, plots and ``run.json``.

    With ``faithfulness_rows`` (from :func:`~toast_core.analysis.faithfulness.run_faithfulness`) also
    ``faithfulness_rows.csv``, ``faithfulness_ranking.csv``, the ranking in ``summary.md`` and the
    ``faithfulness_ranking`` plot.
    Returns: ``{"csv": [...], "tables": [...], "plots": [...]}`` paths.
    """
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recs = _records(rows)
    written: dict[str, list[Path]] = {"csv": [write_rows_csv(recs, out / "rows.csv")], "tables": [], "plots": []}
    for name, table in (("summary.csv", summarise(recs, n_boot=n_boot)), ("layer_average.csv", layer_average(recs, n_boot=n_boot))):
        table = _records(table)
        cols = list(table[0].keys())
        written["tables"].append(write_table_csv(table, out / name, cols))
    md = summary_markdown(recs, title=title, n_boot=n_boot)
    if faithfulness_rows:
        md += "\n" + _write_faithfulness(faithfulness_rows, out, written, n_boot, faithfulness_steps)
    atomic_write_bytes(out / "summary.md", md.encode())
    written["tables"].append(out / "summary.md")
    kinds = list(dict.fromkeys(r["kind"] for r in recs))
    n_layers = len({r["layer"] for r in recs})
    for kind in kinds:
        if n_layers > 1:
            fig = plot_metric_vs_layer(recs, ("energy_target", "energy_distractors", "pointing_hit", "auc"), kind)
            written["plots"] += save_figure(fig, out, f"layers_{kind}")
        written["plots"] += save_figure(plot_accuracy_vs_energy(recs, kind), out, f"accuracy_vs_energy_{kind}")
    if meta is not None:
        atomic_write_bytes(out / "run.json", (json.dumps(meta, indent=1, default=str) + "\n").encode())
    return written


def _write_faithfulness(frows, out: Path, written: dict, n_boot: int, steps: Optional[int]) -> str:
    """The faithfulness CSVs and plot (paths added to ``written``); returns the ranking's markdown."""
    from .faithfulness import FAITH_COLUMNS, ranking_markdown, ranking_records, ranking_table

    table = ranking_table(frows, n_boot=n_boot)
    written["csv"].append(write_table_csv(list(frows), out / "faithfulness_rows.csv", list(FAITH_COLUMNS)))
    flat = ranking_records(table)
    written["tables"].append(write_table_csv(flat, out / "faithfulness_ranking.csv", list(flat[0])))
    written["plots"] += save_figure(plot_faithfulness_ranking(table), out, "faithfulness_ranking")
    return ranking_markdown(table, steps)
