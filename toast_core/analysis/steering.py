"""Does TOAST's top-down pass refocus? Ratios over images from the tidy analysis rows.

Per TOAST model (rows with a bottom-up and a top-down pass):

* ``gate_target_x_uniform``: the share of the gate map's mass on the target over the target's area
  share (what a uniform gate would put there), as a ratio of means over images; the same for the
  distractors (``gate_distractors_x_uniform``).
* ``td_over_bu_<kind>``: the top-down pass's share of the map on the target at the last analysed
  layer over the bottom-up pass's, ratio of means over images, for each map kind analysed (head-mean
  CLS attention ``cls``, token norm ``token_norm``...).
* ``accuracy`` of the top-down pass.

Confidence intervals: percentile bootstrap over images (the same resamples for numerator and
denominator).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .engine import _records

NAN = float("nan")


def ratio_ci(num: Sequence[float], den: Sequence[float], n_boot: int = 1000, ci: float = 0.95,
             seed: int = 0) -> tuple[float, float, float]:
    """mean(num) / mean(den) over paired items with a percentile bootstrap CI; NaN pairs dropped."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size == 0 or b.mean() == 0:
        return NAN, NAN, NAN
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, (int(n_boot), a.size))
    boots = a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-30)
    lo, hi = np.percentile(boots, [50 * (1 - ci), 50 * (1 + ci)])
    return float(a.mean() / b.mean()), float(lo), float(hi)


def steering_table(rows, n_boot: int = 1000) -> list[dict]:
    """One dict per TOAST model (see the module docstring); empty when no model has two passes."""
    recs = _records(rows)
    out = []
    for method in dict.fromkeys(r["method"] for r in recs):
        rs = [r for r in recs if r["method"] == method]
        if {r["pass"] for r in rs} != {"bottom-up", "top-down"}:
            continue
        last = max(r["layer"] for r in rs)
        kinds = list(dict.fromkeys(r["kind"] for r in rs))
        per_img = {}
        for r in rs:
            if r["layer"] == last:
                per_img.setdefault(r["image_id"], {})[(r["pass"], r["kind"])] = r
        imgs = list(per_img.values())
        any_row = [next(iter(v.values())) for v in imgs]
        rec = {"method": method, "n": len(imgs), "last_layer": last,
               "accuracy": (float(np.mean([r["correct"] for r in any_row])), NAN, NAN),
               "gate_target_x_uniform": ratio_ci([r["gate_energy_target"] for r in any_row],
                                                 [r["target_area"] for r in any_row], n_boot),
               "gate_distractors_x_uniform": ratio_ci([r["gate_energy_distractors"] for r in any_row],
                                                      [r["distractor_area"] for r in any_row], n_boot)}
        for kind in kinds:
            pairs = [(v[("top-down", kind)]["energy_target"], v[("bottom-up", kind)]["energy_target"])
                     for v in imgs if ("top-down", kind) in v and ("bottom-up", kind) in v]
            rec[f"td_over_bu_{kind}"] = ratio_ci([p[0] for p in pairs], [p[1] for p in pairs], n_boot)
            rec[f"target_share_{kind}"] = (float(np.mean([p[0] for p in pairs])) if pairs else NAN,
                                           float(np.mean([p[1] for p in pairs])) if pairs else NAN)
        out.append(rec)
    return out


def steering_markdown(rows, n_boot: int = 1000) -> str:
    """The steering table as markdown ('' when no TOAST model is in the rows)."""
    table = steering_table(rows, n_boot)
    if not table:
        return ""
    kinds = sorted({k[len("td_over_bu_"):] for t in table for k in t if k.startswith("td_over_bu_")})
    lines = ["## TOAST: does the top-down pass refocus?", "",
             "Ratios of means over images [95% bootstrap CI]. Gate ×uniform: share of the gate's mass on the "
             "object over the object's area share (1 = a uniform gate). Top-down ÷ bottom-up: the top-down "
             "pass's map share on the target at the last analysed layer over the bottom-up pass's.", "",
             "| model | accuracy | gate ×uniform, target | gate ×uniform, distractors | "
             + " | ".join(f"top-down ÷ bottom-up target share ({k})" for k in kinds) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(kinds)]
    fmt = lambda t: "–" if not np.isfinite(t[0]) else f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"  # noqa: E731
    for t in table:
        cells = [f"{100 * t['accuracy'][0]:.1f} %", fmt(t["gate_target_x_uniform"]), fmt(t["gate_distractors_x_uniform"])]
        for k in kinds:
            share = t.get(f"target_share_{k}", (NAN, NAN))
            cells.append(fmt(t.get(f"td_over_bu_{k}", (NAN, NAN, NAN))) + f" ({share[0]:.3f} vs {share[1]:.3f})")
        lines.append(f"| {t['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
