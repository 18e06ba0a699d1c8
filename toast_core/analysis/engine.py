"""The analysis engine: one recorded forward per batch and model, tidy rows for every layer and kind."""
from __future__ import annotations

import contextlib
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from .metrics import deletion_insertion_curves
from ..recording import AttentionResult, extract_attention

from .datasets import _image_id, _item
from .geometry import _stack_geometry, batch_map_metrics, image_geometry, rollout_all_layers
from .options import COLUMNS, NAN, Progress, parse_kinds, parse_layers, resolve_device

def _model_layers(model: torch.nn.Module) -> int:
    return len(getattr(model, "vit", model).blocks)


def _kind_maps(result: AttentionResult, pass_name: str, kind: str, layers: list[int]) -> torch.Tensor:
    """(len(layers), B, h, w) maps of one kind and pass."""
    if kind == "cls":
        return result.cls[pass_name][layers]
    if kind == "token_norm":
        return result.token_norm[pass_name][layers]
    return rollout_all_layers(result, pass_name)[layers]


def _faithfulness(model, images, maps, preds, steps, baseline, batch_size, fkw) -> list[tuple[float, float]]:
    def predict(x):
        return torch.softmax(model(x, **fkw), dim=-1)

    out = []
    for b in range(images.shape[0]):
        c = deletion_insertion_curves(predict, images[b], maps[b].detach().cpu().clamp_min(0), int(preds[b]),
                                      steps=steps, baseline=baseline, batch_size=batch_size)
        out.append((c["deletion_auc"], c["insertion_auc"]))
    return out


def run_analysis(models: Mapping[str, torch.nn.Module], dataset, layers: str | Sequence[int] = "all",
                 kinds: str | Sequence[str] = ("cls", "rollout", "token_norm"), batch_size: int = 32,
                 device: str | torch.device | None = "auto", progress: Optional[Progress] = None, *,
                 faithfulness: bool = False, faithfulness_steps: int = 16, faithfulness_baseline: str = "blur",
                 faithfulness_max_images: Optional[int] = None,
                 forward_kwargs: Optional[Mapping[str, dict]] = None, tolerance_px: Optional[float] = None,
                 iou_threshold: float = 0.5, as_frame: Optional[bool] = None,
                 batch_starts: Optional[Sequence[int]] = None):
    """Run every model over the dataset and measure where its attention lands.

    Args:
        models: name → model built by :func:`toast_core.build_model` (the name fills ``method``).
        dataset: items as described in the module doc (e.g. from :func:`load_dataset`).
        layers: ``"all"``, ``"last"``, ``"0,5,11"`` or a list (0-based, per model's depth).
        kinds: map kinds among :data:`ANALYSIS_KINDS`.
        batch_size: images per recorded forward pass.
        device: ``"auto"`` (GPU when present), ``"cpu"``, ``"cuda"``...; models are moved there for
            the run and moved back (and their train/eval mode restored) afterwards.
        progress: called as ``progress(done, total)`` in images × models after each batch.
        faithfulness: also compute deletion / insertion AUC (Petsiuk et al.) of the last layer's ``cls``
            map of the final pass, reported on those rows only (computed only when that layer and kind
            are analysed); costs ``2·(steps+1)`` forwards per image.
        faithfulness_steps, faithfulness_baseline: see :func:`~toast_core.analysis.metrics.deletion_insertion_curves`.
        faithfulness_max_images: compute the curves for the first N images only (NaN for the rest).
        forward_kwargs: name → extra forward arguments (e.g. ``{"toast@0.5": {"td_scale": 0.5}}``).
        tolerance_px: pointing-game tolerance in pixels of the dataset's images (default 15 px at 224).
        iou_threshold: threshold of the min-max normalised map for ``iou``.
        as_frame: return a pandas DataFrame (default: when pandas is installed) or a list of dicts.
        batch_starts: analyse only the batches starting at these image indices (multiples of
            ``batch_size``; default all). Image ids and ``faithfulness_max_images`` keep their positions
            in the whole dataset (how :mod:`~toast_core.analysis.distributed` shards a run).
    Returns:
        tidy rows, one per image × method × pass × layer × kind, with the columns :data:`COLUMNS`.
    """
    if not models:
        raise InputError("no model to analyse")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    kinds = parse_kinds(kinds)
    dev = resolve_device(device)
    n_img = len(dataset)
    if n_img == 0:
        raise InputError("the dataset is empty")
    fkw_all = dict(forward_kwargs or {})
    unknown = sorted(set(fkw_all) - set(models))
    if unknown:
        raise InputError(f"forward_kwargs for unknown model name(s) {unknown}")
    chosen = {name: parse_layers(layers, _model_layers(m)) for name, m in models.items()}
    starts = _checked_starts(batch_starts, n_img, batch_size)
    rows: list[dict] = []
    total, done = sum(min(batch_size, n_img - s) for s in starts) * len(models), 0
    with models_on_device(models, dev):
        for start in starts:  # each batch is read once and shown to every model
            items = [_item(dataset, i) for i in range(start, min(n_img, start + batch_size))]
            images = torch.stack([torch.as_tensor(it["image"], dtype=torch.float32) for it in items]).to(dev)
            labels = [int(it["label"]) for it in items]
            ids = [_image_id(it, start + j) for j, it in enumerate(items)]
            geos: dict[tuple, dict[str, torch.Tensor]] = {}  # grid -> stacked geometry
            for mi, (name, model) in enumerate(models.items()):
                fkw = dict(fkw_all.get(name, {}))
                res = extract_attention(model, images, full="rollout" in kinds, forward_kwargs=fkw)
                probs = torch.softmax(res.logits.float(), dim=-1).cpu()
                if max(labels) >= probs.shape[1]:
                    raise InputError(f"model '{name}' has {probs.shape[1]} classes but the dataset has label {max(labels)}")
                preds = probs.argmax(dim=-1)
                if res.grid not in geos:
                    geos[res.grid] = _stack_geometry([
                        image_geometry(it["target_mask"], res.grid, it.get("distractor_mask"), it.get("parts"),
                                       tolerance_px) for it in items])
                n_faith = 0
                if faithfulness:
                    limit = n_img if faithfulness_max_images is None else int(faithfulness_max_images)
                    n_faith = max(0, min(len(items), limit - start))
                rows += _batch_rows(name, model, res, images, geos[res.grid], chosen[name], kinds, ids, labels,
                                    probs, preds, fkw, iou_threshold, batch_size,
                                    (faithfulness_steps, faithfulness_baseline, n_faith) if n_faith else None)
                if progress is not None:
                    progress(done + (mi + 1) * len(items), total)
            done += len(items) * len(models)
    return _as_output(rows, as_frame)


@contextlib.contextmanager
def models_on_device(models: Mapping[str, torch.nn.Module], dev: torch.device):
    """Models in eval mode on ``dev`` for the block; their device and train/eval mode restored after."""
    state = {}  # name -> (device, training) to restore
    try:
        for name, model in models.items():
            params = list(model.parameters())
            state[name] = (params[0].device if params else torch.device("cpu"), model.training)
            model.eval().to(dev)
        yield
    finally:
        for name, (home, training) in state.items():
            models[name].to(home).train(training)


def _checked_starts(batch_starts, n_img: int, batch_size: int) -> list[int]:
    all_starts = range(0, n_img, batch_size)
    if batch_starts is None:
        return list(all_starts)
    bad = [s for s in batch_starts if s not in all_starts]
    if bad:
        raise InputError(f"batch_starts {bad} are not starts of batches of {batch_size} in {n_img} images")
    return list(batch_starts)


def _batch_rows(name, model, res, images, G, chosen, kinds, ids, labels, probs, preds, fkw, iou_threshold,
                batch_size, faith_opts) -> list[dict]:
    """Rows of one batch and one model (every pass, chosen layer and kind)."""
    B, nl = len(ids), len(chosen)
    n_layers = res.cls[res.final_pass].shape[0]
    faith = None
    if faith_opts is not None and "cls" in kinds and n_layers - 1 in chosen:  # where the values are reported
        steps, baseline, n_faith = faith_opts
        faith = _faithfulness(model, images[:n_faith], res.cls[res.final_pass][-1], preds, steps, baseline,
                              batch_size, fkw)
        faith += [(NAN, NAN)] * (B - n_faith)
    geo = {k: v.unsqueeze(0).expand(nl, *v.shape).reshape(nl * B, *v.shape[1:]) for k, v in G.items()}
    area_t = G["cov_t"].flatten(1).mean(1).tolist()
    area_d = torch.where(G["has_d"] > 0, G["cov_d"].flatten(1).mean(1), torch.full((B,), NAN, dtype=torch.float64)).tolist()
    gate_t = gate_d = np.full(B, NAN)
    td_ratio = np.full((nl, B), NAN)
    if res.gate is not None:  # TOAST: where the token selection looks, and how large the steering is
        gm = batch_map_metrics(res.gate.float().cpu(), G)
        gate_t, gate_d = gm["energy_target"], gm["energy_distractors"]
    if res.value_ratio is not None:  # |W_v td| against the values it is added to (td_scale applied)
        td_ratio = res.value_ratio[chosen].float().cpu().numpy()
    rows = []
    for pass_name in res.passes:
        pm = res.prefix_mass[pass_name][chosen].cpu().numpy()  # (nl, B)
        qm = res.prompt_mass[pass_name][chosen].cpu().numpy()
        for kind in kinds:
            maps = _kind_maps(res, pass_name, kind, chosen)  # (nl, B, h, w)
            met = batch_map_metrics(maps.reshape(nl * B, *maps.shape[2:]), geo, iou_threshold)
            with_faith = faith is not None and kind == "cls" and pass_name == res.final_pass
            for li, layer in enumerate(chosen):
                for b in range(B):
                    k = li * B + b
                    f = faith[b] if with_faith and layer == n_layers - 1 else (NAN, NAN)
                    row = {
                        "image_id": ids[b], "method": name, "layer": int(layer), "kind": kind, "pass": pass_name,
                        "label": labels[b], "pred": int(preds[b]), "correct": float(preds[b] == labels[b]),
                        "prob": float(probs[b, preds[b]]), "prob_label": float(probs[b, labels[b]]),
                        **{m: float(v[k]) for m, v in met.items()},
                        "prefix_share": float(pm[li, b]) if kind == "cls" else NAN,
                        "prompt_share": float(qm[li, b]) if kind == "cls" else NAN,
                        "deletion_auc": float(f[0]), "insertion_auc": float(f[1]),
                        "gate_energy_target": float(gate_t[b]), "gate_energy_distractors": float(gate_d[b]),
                        "td_ratio": float(td_ratio[li, b]), "target_area": area_t[b], "distractor_area": area_d[b],
                    }
                    rows.append({c: row[c] for c in COLUMNS})
    return rows


def _as_output(rows: list[dict], as_frame: Optional[bool]):
    if as_frame is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_frame:
            raise InputError("as_frame=True needs pandas (pip install pandas)") from None
        return rows
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _records(rows) -> list[dict]:
    if hasattr(rows, "to_dict"):
        return rows.to_dict("records")
    return list(rows)
