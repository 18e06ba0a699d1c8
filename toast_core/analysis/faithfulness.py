"""Which map is faithful? Every map kind of every method ranked by deletion and insertion AUC.

For each image, method and map kind of :data:`toast_core.maps.MAP_KINDS` (plus ``random``, a seeded
uniform-noise map: the chance reference), the map of the predicted class (final pass for TOAST) is
scored four ways:

* **deletion AUC** (Petsiuk et al., BMVC 2018; lower is better): the predicted class's softmax
  probability as the patches are replaced, most important first, by the image's per-channel mean
  (a constant carrying no shape; Petsiuk used black), area under that curve over the share removed;
* **insertion AUC** (higher is better): the probability as the patches are revealed, most important
  first, over a Gaussian-blurred copy (σ = max(H, W)/45, Petsiuk's blur for insertion);
* **pointing game** and **energy on the target** (share of the map's mass in the target mask), as
  in the rest of the analysis.

``steps`` (default 8) sets how many equal shares of the patches are removed/revealed: each curve has
``steps + 1`` points, so one image costs 2·(steps+1) forwards per kind, sent as one batch. Signed maps
(Integrated Gradients before |·|, AttnLRP) are ranked on their raw values (deletion removes the most
positive first) and localised on their positive part. The ranking within a method orders kinds by
insertion − deletion (per image, then the mean; higher is better); ``gap`` is the paired 95 % CI of
that difference to the next kind down, so a rank is only meaningful where the gap excludes 0.

New kinds registered in ``MAP_KINDS`` and computed by :func:`toast_core.maps.maps_for` join by
themselves.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from .datasets import _image_id, _item
from .engine import _records, models_on_device
from .geometry import _stack_geometry, batch_map_metrics, image_geometry
from .metrics import bootstrap_ci, deletion_insertion_curves
from .options import NAN, Progress, resolve_device

#: the chance reference: a seeded uniform-noise map per image (same for every method)
REFERENCE_KIND = "random"
#: per-image row columns of :func:`run_faithfulness`
FAITH_COLUMNS = ("image_id", "method", "kind", "label", "pred", "correct", "prob", "deletion_auc",
                 "insertion_auc", "ins_minus_del", "pointing_hit", "energy_target", "seconds")
#: metrics summarised per (method, kind): (column, label, higher is better)
FAITH_METRICS = (("deletion_auc", "deletion AUC ↓", False), ("insertion_auc", "insertion AUC ↑", True),
                 ("ins_minus_del", "insertion − deletion ↑", True), ("pointing_hit", "pointing game ↑", True),
                 ("energy_target", "energy on target ↑", True))


def available_kinds() -> list[str]:
    """Every map kind the ranking can score: ``MAP_KINDS`` (read at call time) and ``random``."""
    from ..maps import MAP_KINDS

    return list(MAP_KINDS) + [REFERENCE_KIND]


def parse_map_kinds(spec: str | Sequence[str] | None = None) -> list[str]:
    """Kinds from ``"cls,rollout"``, a list, or None / ``"all"`` (every available kind)."""
    valid = available_kinds()
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return valid
    items = [k.strip() for k in (spec.split(",") if isinstance(spec, str) else spec) if k.strip()]
    bad = [k for k in items if k not in valid]
    if bad or not items:
        raise InputError(f"map kinds must be among {valid} (or 'all'), got {items}")
    return list(dict.fromkeys(items))


def random_maps(indices: Sequence[int], grid: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """(B, h, w) uniform noise, one map per dataset index (the same whichever method asks)."""
    out = []
    for i in indices:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(i))
        out.append(torch.rand(tuple(grid), generator=g, dtype=torch.float64))
    return torch.stack(out)


def ordering_map(m: Any) -> np.ndarray:
    """A non-negative (h, w) map with the same patch order as ``m`` (signed maps shifted by their min)."""
    a = np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m, dtype=np.float64)
    if a.ndim != 2 or not np.all(np.isfinite(a)):
        raise InputError(f"a map must be a finite (h, w) array, got shape {a.shape}")
    return a - min(0.0, float(a.min()))


def image_curves(score: Callable[[torch.Tensor], Any], image: torch.Tensor, m: Any, target: int, steps: int = 8,
                 deletion_baseline: Any = "mean", insertion_baseline: Any = "blur") -> dict[str, Any]:
    """Deletion and insertion curves of one image and map (see the module doc).

    Args: score: (B, 3, H, W) → (B, C) class probabilities. image: (3, H, W). m: (h, w) map (any sign).
        target: the class whose probability is tracked. steps: points per curve − 1.
        deletion_baseline / insertion_baseline: what removed / hidden patches show (``"mean"``,
        ``"blur"``, ``"zero"`` or a tensor), as :func:`~toast_core.analysis.metrics.deletion_insertion_curves`.
    Returns: dict ``deletion``, ``insertion`` (steps+1 probabilities), ``fractions``, ``deletion_auc``,
        ``insertion_auc``.
    """
    return deletion_insertion_curves(score, image, ordering_map(m), int(target), steps=steps,
                                     baseline=deletion_baseline, insertion_baseline=insertion_baseline,
                                     batch_size=2 * (int(steps) + 1))


def kind_maps(model: torch.nn.Module, images: torch.Tensor, kind: str, indices: Sequence[int],
              forward_kwargs: Optional[dict] = None, seed: int = 0) -> torch.Tensor:
    """(B, h, w) maps of one kind for the predicted class (final pass), float64 on the CPU."""
    from ..maps import maps_for, patch_grid

    if kind == REFERENCE_KIND:
        return random_maps(indices, patch_grid(model, images), seed)
    try:
        maps, _ = maps_for(model, images, kind=kind, forward_kwargs=forward_kwargs)
    except (ValueError, RuntimeError, NotImplementedError) as e:
        raise InputError(f"map kind '{kind}' failed: {e}") from e
    maps = maps.detach().to("cpu", torch.float64)
    if maps.ndim != 3 or maps.shape[0] != images.shape[0] or not torch.isfinite(maps).all():
        raise InputError(f"map kind '{kind}' gave {tuple(maps.shape)} maps (finite (B, h, w) expected)")
    return maps


def _score_fn(model: torch.nn.Module, fkw: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    def score(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x, **fkw).float(), dim=-1)
    return score


def _model_rows(name, model, images, items, ids, indices, kinds, fkw, opts, geos) -> list[dict]:
    """Rows of one batch and one model: every kind, every image."""
    score = _score_fn(model, fkw)
    with torch.no_grad():
        probs = score(images).cpu()
    preds = probs.argmax(dim=-1)
    rows = []
    for kind in kinds:
        t0 = time.perf_counter()
        maps = kind_maps(model, images, kind, indices, fkw, opts["seed"])
        grid = tuple(maps.shape[-2:])
        if grid not in geos:
            geos[grid] = _stack_geometry([image_geometry(it["target_mask"], grid, None, None, opts["tolerance_px"])
                                          for it in items])
        loc = batch_map_metrics(maps.clamp_min(0), geos[grid])
        curves = [image_curves(score, images[b], maps[b], int(preds[b]), opts["steps"], opts["deletion_baseline"],
                               opts["insertion_baseline"]) for b in range(len(items))]
        per_image = (time.perf_counter() - t0) / len(items)
        for b, c in enumerate(curves):
            label = int(items[b]["label"])
            rows.append(dict(image_id=ids[b], method=name, kind=kind, label=label, pred=int(preds[b]),
                             correct=float(preds[b] == label), prob=float(probs[b, preds[b]]),
                             deletion_auc=c["deletion_auc"], insertion_auc=c["insertion_auc"],
                             ins_minus_del=c["insertion_auc"] - c["deletion_auc"],
                             pointing_hit=float(loc["pointing_hit"][b]), energy_target=float(loc["energy_target"][b]),
                             seconds=per_image))
    return rows


def run_faithfulness(models: Mapping[str, torch.nn.Module], dataset, kinds: str | Sequence[str] | None = None, *,
                     steps: int = 8, deletion_baseline: Any = "mean", insertion_baseline: Any = "blur",
                     max_images: Optional[int] = None, batch_size: int = 8, device: Any = "auto",
                     progress: Optional[Progress] = None, forward_kwargs: Optional[Mapping[str, dict]] = None,
                     tolerance_px: Optional[float] = None, seed: int = 0) -> list[dict]:
    """Score every map kind of every model on the first ``max_images`` images of an annotated dataset.

    Args: models: name → model. dataset: items as for :func:`~toast_core.analysis.run_analysis` (a
        ``target_mask`` per image). kinds: see :func:`parse_map_kinds` (default: all). steps,
        deletion_baseline, insertion_baseline: see :func:`image_curves`. batch_size: images per map
        computation. device: as ``run_analysis`` (models are moved back afterwards). progress:
        ``progress(done, total)`` in images × models. forward_kwargs: name → forward arguments.
        tolerance_px: pointing-game tolerance. seed: of the ``random`` reference maps.
    Returns: one dict per image × method × kind with the columns :data:`FAITH_COLUMNS`; ``seconds``
        is the kind's time per image (map + both curves) in that batch.
    Cost: per image, model and kind, 2·(steps+1) forwards plus the map itself (integrated gradients:
        16 forward-backward passes).
    """
    kinds = parse_map_kinds(kinds)
    if not models:
        raise InputError("no model to analyse")
    if int(steps) < 1 or int(batch_size) < 1:
        raise InputError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    n_img = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n_img < 1:
        raise InputError("no image to score")
    unknown = sorted(set(forward_kwargs or {}) - set(models))
    if unknown:
        raise InputError(f"forward_kwargs for unknown model name(s) {unknown}")
    opts = dict(steps=int(steps), deletion_baseline=deletion_baseline, insertion_baseline=insertion_baseline,
                tolerance_px=tolerance_px, seed=seed)
    dev = resolve_device(device)
    rows: list[dict] = []
    with models_on_device(models, dev):
        for start in range(0, n_img, batch_size):
            idx = list(range(start, min(n_img, start + batch_size)))
            items = [_item(dataset, i) for i in idx]
            images = torch.stack([torch.as_tensor(it["image"], dtype=torch.float32) for it in items]).to(dev)
            ids = [_image_id(it, i) for it, i in zip(items, idx)]
            geos: dict[tuple, dict] = {}
            for mi, (name, model) in enumerate(models.items()):
                fkw = dict((forward_kwargs or {}).get(name, {}))
                rows += _model_rows(name, model, images, items, ids, idx, kinds, fkw, opts, geos)
                if progress is not None:
                    progress(start * len(models) + (mi + 1) * len(idx), n_img * len(models))
    return rows


# ------------------------------------------------------------------------------------------------
# The ranking
# ------------------------------------------------------------------------------------------------

def _groups(rows) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in _records(rows):
        out.setdefault((r["method"], r["kind"]), []).append(r)
    return out


def paired_gap(a: Sequence[dict], b: Sequence[dict], metric: str = "ins_minus_del", n_boot: int = 1000,
               ci: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean [CI] of ``a − b`` in ``metric`` over the images both rows lists share (paired bootstrap)."""
    vb = {r["image_id"]: r[metric] for r in b}
    return bootstrap_ci([r[metric] - vb[r["image_id"]] for r in a if r["image_id"] in vb], n_boot, ci, seed)


def ranking_table(rows, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> list[dict]:
    """One row per (method, kind): mean [CI] of every :data:`FAITH_METRICS`, ranks within the method.

    Returns: dicts with ``method``, ``kind``, ``n``, ``seconds`` (mean per image), a (mean, lo, hi)
        triple per metric, ``rank`` (1 = best by insertion − deletion), ``rank_deletion``,
        ``rank_insertion``, and ``gap`` (paired CI of insertion − deletion against the next rank;
        NaN for the last), sorted by method (first-seen order) and rank.
    """
    groups = _groups(rows)
    if not groups:
        raise InputError("no faithfulness rows to rank")
    table = []
    for (method, kind), rs in groups.items():
        rec: dict[str, Any] = dict(method=method, kind=kind, n=len(rs), seconds=float(np.mean([r["seconds"] for r in rs])))
        for m, _, _ in FAITH_METRICS:
            rec[m] = bootstrap_ci([r[m] for r in rs], n_boot, ci, seed)
        table.append(rec)
    out = []
    for method in dict.fromkeys(t["method"] for t in table):
        mine = [t for t in table if t["method"] == method]
        for key, col, sign in (("rank_deletion", "deletion_auc", 1), ("rank_insertion", "insertion_auc", -1),
                               ("rank", "ins_minus_del", -1)):
            order = sorted(mine, key=lambda t: sign * _finite(t[col][0], sign))
            for r, t in enumerate(order, 1):
                t[key] = r
        mine.sort(key=lambda t: t["rank"])
        for t, nxt in zip(mine, mine[1:] + [None]):
            t["gap"] = ((NAN,) * 3 if nxt is None else
                        paired_gap(groups[(method, t["kind"])], groups[(method, nxt["kind"])], n_boot=n_boot, ci=ci, seed=seed))
        out += mine
    return out


def _finite(v: float, sign: int) -> float:
    return v if math.isfinite(v) else sign * math.inf


def kind_ranks(table: Sequence[dict]) -> list[dict]:
    """Across methods: per kind, the mean rank, how often it ranks first, and the mean insertion − deletion."""
    kinds = list(dict.fromkeys(t["kind"] for t in table))
    out = []
    for k in kinds:
        ts = [t for t in table if t["kind"] == k]
        out.append(dict(kind=k, methods=len(ts), mean_rank=float(np.mean([t["rank"] for t in ts])),
                        firsts=sum(t["rank"] == 1 for t in ts),
                        ins_minus_del=float(np.nanmean([t["ins_minus_del"][0] for t in ts]))))
    return sorted(out, key=lambda d: d["mean_rank"])


def _fmt(t: tuple) -> str:
    mean, lo, hi = t
    return "–" if not math.isfinite(mean) else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def ranking_markdown(table: Sequence[dict], steps: Optional[int] = None) -> str:
    """The ranking as markdown: the per-(method, kind) table, then the kinds across methods."""
    from ..maps import MAP_KINDS

    how = f"{steps} steps, " if steps else ""
    lines = ["## Which map is faithful? (deletion / insertion, every map kind)", "",
             f"Per image, the predicted class's probability as the map's most important patches are removed "
             f"(deletion: replaced by the image's mean colour) or revealed over a blurred copy (insertion); "
             f"{how}area under each curve. Maps of the predicted class, final pass (TOAST: top-down). "
             "Rank within a method by insertion − deletion; **gap** = paired 95 % CI of that difference to "
             "the next rank (a rank is separable only where it excludes 0). `random` is uniform noise: the "
             "chance level. Mean [95 % bootstrap CI] over images.", "",
             "| method | rank | kind | " + " | ".join(lab for _, lab, _ in FAITH_METRICS) + " | gap to next | s / image |",
             "|---|---:|---|" + "---|" * len(FAITH_METRICS) + "---|---:|"]
    for t in table:
        label = MAP_KINDS.get(t["kind"], "random noise" if t["kind"] == REFERENCE_KIND else t["kind"])
        lines.append(f"| {t['method']} | {t['rank']} | {label} (`{t['kind']}`) | "
                     + " | ".join(_fmt(t[m]) for m, _, _ in FAITH_METRICS)
                     + f" | {_fmt(t['gap'])} | {t['seconds']:.3f} |")
    lines += ["", "Across methods (mean rank by insertion − deletion; 1 = best):", "",
              "| kind | methods | mean rank | ranked first | mean insertion − deletion |", "|---|---:|---:|---:|---:|"]
    for k in kind_ranks(table):
        lines.append(f"| `{k['kind']}` | {k['methods']} | {k['mean_rank']:.2f} | {k['firsts']} | {k['ins_minus_del']:.3f} |")
    return "\n".join(lines) + "\n"


def ranking_records(table: Sequence[dict]) -> list[dict]:
    """Flat dicts for CSV / a dataframe: ``metric_mean``, ``metric_lo``, ``metric_hi`` per triple."""
    out = []
    for t in table:
        rec = {}
        for k, v in t.items():
            if isinstance(v, tuple):
                rec.update({f"{k}_mean": v[0], f"{k}_lo": v[1], f"{k}_hi": v[2]})
            else:
                rec[k] = v
        out.append(rec)
    return out


def attach_to_rows(rows: list[dict], faith_rows: Sequence[dict], depths: Mapping[str, int]) -> int:
    """Copy the ``cls`` kind's deletion / insertion AUC into the analysis rows of the same map.

    That map is the last layer's head-mean CLS attention of the final pass (``depths``: method → blocks),
    which :func:`toast_core.analysis.run_analysis` rows hold at ``layer = depth − 1``. Returns the rows filled.
    """
    from .tables import _final_pass

    got = {(r["method"], r["image_id"]): r for r in faith_rows if r["kind"] == "cls"}
    finals: dict[str, set] = {}
    for r in rows:
        finals.setdefault(r["method"], set()).add(r["pass"])
    finals = {m: _final_pass(p) for m, p in finals.items()}
    n = 0
    for r in rows:
        f = got.get((r["method"], r["image_id"]))
        if (f is not None and r["kind"] == "cls" and r["pass"] == finals[r["method"]]
                and r["method"] in depths and r["layer"] == depths[r["method"]] - 1):
            r["deletion_auc"], r["insertion_auc"] = f["deletion_auc"], f["insertion_auc"]
            n += 1
    return n
