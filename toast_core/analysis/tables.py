"""Tidy rows as CSV, and their summaries: bootstrap CIs per group, layer averages, the headline table."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ..cache import atomic_write_bytes
from ..errors import InputError
from .metrics import bootstrap_ci

from .engine import _records
from .options import COLUMNS, GROUP_KEYS, METRICS, NAN

def write_rows_csv(rows, path: str | os.PathLike) -> Path:
    """Write tidy rows to CSV with the columns of :data:`COLUMNS` (NaN written as empty)."""
    return write_table_csv(_records(rows), path, list(COLUMNS))


def write_table_csv(table: Sequence[Mapping], path: str | os.PathLike, columns: Sequence[str]) -> Path:
    """Write dicts as CSV with the given columns (floats with 6 significant digits, NaN empty)."""
    import io

    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    wr.writeheader()
    for r in table:
        wr.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else (f"{v:.6g}" if isinstance(v, float) else v))
                     for k, v in r.items()})
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def read_rows_csv(path: str | os.PathLike) -> list[dict]:
    """Read a CSV written by :func:`write_rows_csv` back as dicts (numbers parsed, empty → NaN)."""
    ints = {"layer", "label", "pred"}
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if k in ("image_id", "method", "kind", "pass"):
                    row[k] = v
                elif k in ints:
                    row[k] = int(v)
                else:
                    row[k] = float(v) if v != "" else NAN
            out.append(row)
    return out



def _frame(records: list[dict], columns: list[str]):
    try:
        import pandas as pd
    except ImportError:
        return records
    return pd.DataFrame(records, columns=columns)


def _ci_fields(prefix: str, values, n_boot: int, ci: float, seed: int) -> dict:
    mean, lo, hi = bootstrap_ci(np.asarray(values, dtype=np.float64), n_boot=n_boot, ci=ci, seed=seed)
    return {f"{prefix}_mean": mean, f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def summarise(rows, metrics: Sequence[str] = METRICS, n_boot: int = 1000, ci: float = 0.95, seed: int = 0):
    """Mean and percentile-bootstrap CI of every metric per (method, pass, kind, layer).

    Args: rows: tidy rows (DataFrame or list of dicts) from :func:`run_analysis`.
    Returns: a DataFrame (list of dicts without pandas) with ``method, pass, kind, layer, n`` and, per
        metric, ``{metric}_mean``, ``{metric}_lo``, ``{metric}_hi`` (NaN where the metric is undefined).
    """
    groups: dict[tuple, list[dict]] = {}
    for r in _records(rows):
        groups.setdefault(tuple(r[k] for k in GROUP_KEYS), []).append(r)
    out = []
    for key, rs in groups.items():
        rec = dict(zip(GROUP_KEYS, key), n=len(rs))
        for m in metrics:
            rec.update(_ci_fields(m, [r.get(m, NAN) for r in rs], n_boot, ci, seed))
        out.append(rec)
    cols = list(GROUP_KEYS) + ["n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "lo", "hi")]
    return _frame(out, cols)


def layer_average(rows, metrics: Sequence[str] = ("energy_target", "energy_distractors", "energy_background",
                                                     "pointing_hit", "iou", "auc", "entropy"),
                  n_boot: int = 1000, ci: float = 0.95, seed: int = 0):
    """Per image, average each metric over the analysed layers; then mean and CI per (method, pass, kind)."""
    per: dict[tuple, dict[Any, list[dict]]] = {}
    for r in _records(rows):
        per.setdefault((r["method"], r["pass"], r["kind"]), {}).setdefault(r["image_id"], []).append(r)
    out = []
    for (method, pass_name, kind), images in per.items():
        rec = {"method": method, "pass": pass_name, "kind": kind, "n": len(images)}
        for m in metrics:
            vals = [np.nanmean([r[m] for r in rs]) if any(np.isfinite(r[m]) for r in rs) else NAN
                    for rs in images.values()]
            rec.update(_ci_fields(m, vals, n_boot, ci, seed))
        out.append(rec)
    return _frame(out, ["method", "pass", "kind", "n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "lo", "hi")])


def _final_pass(passes: Iterable[str]) -> str:
    passes = set(passes)
    return "top-down" if "top-down" in passes else ("main" if "main" in passes else sorted(passes)[-1])


def headline_table(rows, kind: str = "cls", n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> list[dict]:
    """The results table: one row per method (TOAST's bottom-up pass as an extra row).

    Columns (each a (mean, lo, hi) triple): ``accuracy``; ``energy_target`` and
    ``energy_distractors`` at the last analysed layer and averaged over the analysed layers;
    ``pointing_hit``, ``iou``, ``auc``, ``part_hit`` at the last layer; ``deletion_auc``,
    ``insertion_auc``; for TOAST ``gate_energy_target`` and ``td_ratio_layers`` (layer mean).
    Returns: list of dicts with ``method``, ``pass``, ``n`` and those triples.
    """
    recs = [r for r in _records(rows) if r["kind"] == kind]
    if not recs:
        raise InputError(f"no rows of map kind '{kind}'")
    by_method: dict[str, list[dict]] = {}
    for r in recs:
        by_method.setdefault(r["method"], []).append(r)
    out = []
    for method, rs in by_method.items():
        final = _final_pass(r["pass"] for r in rs)
        passes = [final] + sorted({r["pass"] for r in rs} - {final})
        for pass_name in passes:
            prs = [r for r in rs if r["pass"] == pass_name]
            last = max(r["layer"] for r in prs)
            at_last = [r for r in prs if r["layer"] == last]
            per_img: dict[Any, list[dict]] = {}
            for r in prs:
                per_img.setdefault(r["image_id"], []).append(r)
            rec: dict[str, Any] = {"method": method if pass_name == final else f"{method} ({pass_name})",
                                   "pass": pass_name, "n": len(at_last), "last_layer": last}
            fin = [r for r in rs if r["pass"] == final and r["layer"] == last]
            rec["accuracy"] = bootstrap_ci([r["correct"] for r in fin], n_boot, ci, seed)
            for m in ("energy_target", "energy_distractors"):
                rec[f"{m}_last"] = bootstrap_ci([r[m] for r in at_last], n_boot, ci, seed)
                rec[f"{m}_layers"] = bootstrap_ci([np.nanmean([r[m] for r in v]) if any(np.isfinite(r[m]) for r in v) else NAN
                                                   for v in per_img.values()], n_boot, ci, seed)
            for m in ("pointing_hit", "iou", "auc", "part_hit", "deletion_auc", "insertion_auc", "gate_energy_target"):
                rec[m] = bootstrap_ci([r[m] for r in at_last], n_boot, ci, seed)
            rec["td_ratio_layers"] = bootstrap_ci([np.nanmean([r["td_ratio"] for r in v]) if any(np.isfinite(r["td_ratio"]) for r in v)
                                                   else NAN for v in per_img.values()], n_boot, ci, seed)
            out.append(rec)
    return out


_HEADLINE_COLS = [("accuracy", "accuracy"), ("energy_target_last", "E target (last)"),
                  ("energy_target_layers", "E target (layer mean)"),
                  ("energy_distractors_last", "E distractors (last)"),
                  ("energy_distractors_layers", "E distractors (layer mean)"),
                  ("pointing_hit", "pointing (last)"), ("iou", "IoU (last)"), ("auc", "AUC (last)"),
                  ("part_hit", "part hit (last)"), ("deletion_auc", "deletion AUC ↓"),
                  ("insertion_auc", "insertion AUC ↑"), ("gate_energy_target", "TOAST gate E target"),
                  ("td_ratio_layers", "TOAST ‖W_v td‖/‖v‖ (layer mean)")]


def _fmt(t: tuple) -> str:
    mean, lo, hi = t
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def summary_markdown(rows, kinds: Optional[Sequence[str]] = None, title: str = "Attention analysis",
                     n_boot: int = 1000) -> str:
    """Markdown summary: one headline table per map kind (mean [95% CI]); empty columns dropped."""
    recs = _records(rows)
    kinds = list(kinds) if kinds else list(dict.fromkeys(r["kind"] for r in recs))
    n_images = len({r["image_id"] for r in recs})
    lines = [f"# {title}", "", f"{n_images} images; mean [95% bootstrap CI] over images. Energies are shares "
             "of the map's mass; layers are 0-based; accuracy is the model's, whatever the map.", ""]
    per_image = {r["image_id"]: r for r in recs}.values()
    at, ad = (np.nanmean([r.get(k, NAN) for r in per_image]) if any(np.isfinite(r.get(k, NAN)) for r in per_image)
              else NAN for k in ("target_area", "distractor_area"))
    if np.isfinite(at):
        lines += [f"Chance level (a uniform map): energy on the target = its area share, {at:.3f} on average"
                  + (f"; on the distractors {ad:.3f}." if np.isfinite(ad) else "."), ""]
    for kind in kinds:
        table = headline_table(recs, kind, n_boot=n_boot)
        cols = [(k, lab) for k, lab in _HEADLINE_COLS if any(np.isfinite(t[k][0]) for t in table)]
        lines += [f"## Map kind: {kind} (last analysed layer = {table[0]['last_layer']})", "",
                  "| method | " + " | ".join(lab for _, lab in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for t in table:
            lines.append(f"| {t['method']} | " + " | ".join(_fmt(t[k]) for k, _ in cols) + " |")
        lines.append("")
    from .steering import steering_markdown

    steer = steering_markdown(recs, n_boot)
    if steer:
        lines += [steer]
    return "\n".join(lines)
