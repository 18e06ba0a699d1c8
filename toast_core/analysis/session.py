"""The batch attention analysis as the app runs it: pick the dataset, run, and pack the report in memory.

A thin layer over :mod:`toast_core.analysis` (all the maths is there) for interactive use:

* :func:`default_task` says which default-task folder a set of models belongs to (the one their
  checkpoints recorded; else the default task, or its quick variant for random untrained models)
  without generating anything; :meth:`TaskSource.ensure` generates it on first use.
* :func:`run_app_analysis` analyses the first N usable images for every model (models that expect
  different input sizes or normalisations run as separate groups over the same images), writes the
  report of :func:`~toast_core.analysis.write_report` into a temporary folder and returns every file
  as bytes plus a zip of them, so nothing is left on disk.
* :func:`headline_records` formats the headline table as ``mean [lo, hi]`` strings for display.

Example::

    from toast_core.analysis.session import default_task, run_app_analysis
    src = default_task(models, trained=True)
    result = run_app_analysis(models, src.ensure(), n_images=48, kinds=("cls",))
    result.files["summary.md"].decode()
"""
from __future__ import annotations

import io
import math
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from .. import analysis
from ..errors import InputError

__all__ = ["TaskSource", "AppAnalysis", "HEADLINE_LABELS", "default_task", "model_classes", "usable_indices",
           "run_app_analysis", "headline_records", "ranking_display", "faithfulness_kinds", "zip_files"]

Progress = Callable[[int, int], None]

#: display labels of :func:`toast_core.analysis.headline_table` columns (others keep their key)
HEADLINE_LABELS = {
    "accuracy": "accuracy",
    "energy_target_last": "E target (last)",
    "energy_target_layers": "E target (layer mean)",
    "energy_distractors_last": "E distractors (last)",
    "energy_distractors_layers": "E distractors (layer mean)",
    "pointing_hit": "pointing hit (last)",
    "iou": "IoU (last)",
    "auc": "AUC (last)",
    "part_hit": "part hit (last)",
    "deletion_auc": "deletion AUC ↓",
    "insertion_auc": "insertion AUC ↑",
    "gate_energy_target": "TOAST gate E target",
    "td_ratio_layers": "TOAST ‖W_v td‖/‖v‖ (layer mean)",
}


# ------------------------------------------------------------------------------------------------
# The default dataset
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSource:
    """Where the default dataset comes from.

    Attributes:
        config: the generated task's :class:`~toast_core.data.DemoTaskConfig`.
        path: an existing valid folder of it, or None (generated into the cache by :meth:`ensure`).
        note: one sentence for the user (which task, and why).
    """

    config: Any
    path: Optional[Path]
    note: str

    def split_size(self, split: str = "test") -> int:
        """Images in a split (from the config; nothing is read or generated)."""
        sizes = self.config.split_sizes()
        if split not in sizes:
            raise InputError(f"split must be one of {sorted(sizes)}, got {split!r}")
        return int(sizes[split])

    def ensure(self, progress: Optional[Progress] = None) -> Path:
        """The task's folder, generated into the cache first when missing (``progress(done, total)``)."""
        from ..data import ensure_demo_task, is_valid_demo_task

        if self.path is not None and is_valid_demo_task(self.path, self.config):
            return Path(self.path)
        return ensure_demo_task(self.config, progress=progress, workers=1)


def default_task(models: Mapping[str, torch.nn.Module] | Sequence[torch.nn.Module], trained: bool = True
                 ) -> TaskSource:
    """The default-task dataset a set of models should be analysed on (nothing is generated here).

    Args:
        models: the models (name → model, or a list); the first whose checkpoint records its
            training task (``checkpoint_info['data']['task_config']``, as ``prepare-demo`` and
            ``train`` write) decides.
        trained: False when every model is a random untrained one: then the quick default task
            (12 test images, generated in well under a second) is used unless a checkpoint says otherwise.
    Returns:
        a :class:`TaskSource`; ``path`` is the recorded folder when it still holds that task, else the
        cache folder when the task is already generated there, else None.
    """
    from ..data import DemoTaskConfig, default_demo_task_dir, is_valid_demo_task

    items = list(models.values()) if isinstance(models, Mapping) else list(models)
    for m in items:
        info = getattr(m, "checkpoint_info", None) or {}
        data = info.get("data") if isinstance(info.get("data"), dict) else {}
        cfg = data.get("task_config")
        if not isinstance(cfg, dict):
            continue
        try:
            config = DemoTaskConfig.from_dict(cfg)
        except (InputError, TypeError):
            continue
        recorded = data.get("dataset")
        if recorded and is_valid_demo_task(recorded, config):
            return TaskSource(config, Path(recorded), "the task the checkpoints were trained on")
        cached = default_demo_task_dir(config)
        return TaskSource(config, cached if is_valid_demo_task(cached, config) else None,
                          "the task the checkpoints were trained on (regenerated from its recorded settings)")
    if trained:
        config = DemoTaskConfig()
        note = "the default task"
    else:
        config = DemoTaskConfig.quick()
        note = "the quick default task (the models are random and untrained)"
    cached = default_demo_task_dir(config)
    return TaskSource(config, cached if is_valid_demo_task(cached, config) else None, note)


# ------------------------------------------------------------------------------------------------
# Which images
# ------------------------------------------------------------------------------------------------

def model_classes(model: torch.nn.Module) -> Optional[int]:
    """Number of classes a model predicts (its head's ``num_classes`` or ``build_info``), None if unknown."""
    n = getattr(getattr(model, "vit", model), "num_classes", None)
    if n is None:
        n = (getattr(model, "build_info", None) or {}).get("num_classes")
    return int(n) if n else None


def usable_indices(labels: Sequence[int], n: int, num_classes: Optional[int] = None) -> tuple[list[int], int]:
    """The first ``n`` positions whose label a model with ``num_classes`` outputs can predict.

    Args: labels: the split's labels in order. n: images wanted (>= 1). num_classes: None = all usable.
    Returns: (indices, skipped) where ``skipped`` counts the images passed over before the n-th one.
    """
    if int(n) < 1:
        raise InputError(f"the number of images must be >= 1, got {n}")
    out, skipped = [], 0
    for i, label in enumerate(labels):
        if len(out) >= int(n):
            break
        if num_classes is not None and not 0 <= int(label) < num_classes:
            skipped += 1
            continue
        out.append(i)
    return out, skipped


class _Subset:
    """Chosen items of a dataset, in order (other attributes reach the base dataset)."""

    def __init__(self, base, indices: Sequence[int]):
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self.indices):
            raise IndexError(i)
        item = self.base[self.indices[i]]
        if isinstance(item, dict) and item.get("image_id") is None and item.get("index") is None:
            item = {**item, "image_id": self.indices[i]}  # ids stay those of the split
        return item

    def __getattr__(self, name):
        return getattr(self.base, name)


def _labels(ds) -> list[int]:
    labels = getattr(ds, "labels", None)
    if labels is not None:
        return [int(v) for v in labels]
    return [int(ds[i]["label"]) for i in range(len(ds))]


def _input_key(model: torch.nn.Module) -> tuple:
    from ..models import data_config

    cfg = data_config(model)
    return (analysis.model_input_size(model), tuple(float(v) for v in cfg["mean"]),
            tuple(float(v) for v in cfg["std"]))


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

@dataclass
class AppAnalysis:
    """One analysis run, in memory.

    Attributes:
        rows: tidy rows (dicts with :data:`toast_core.analysis.COLUMNS`).
        kinds: map kinds analysed.
        headline: kind → :func:`headline_records` (display rows).
        files: report file name → bytes (``rows.csv``, ``summary.csv``, ``layer_average.csv``,
            ``summary.md``, ``layers_<kind>.png/.pdf`` (when more than one layer),
            ``accuracy_vs_energy_<kind>.png/.pdf``, ``run.json``).
        zip_bytes: all of ``files`` in one zip (under ``analysis/``).
        n_images, skipped: images analysed; images passed over (class beyond a model's outputs).
        data_dir, split: where the images came from.
        seconds: wall time of the run.
        notes: sentences for the user (grouping by input size, skipped images).
        ranking: with faithfulness, :func:`ranking_records` (one display row per method and map kind,
            best first within a method); files then also hold ``faithfulness_ranking.csv``,
            ``faithfulness_rows.csv`` and ``faithfulness_ranking.png/.pdf``.
        n_faithfulness: images the ranking scored (0 without faithfulness).
    """

    rows: list[dict]
    kinds: list[str]
    headline: dict[str, list[dict]]
    files: dict[str, bytes]
    zip_bytes: bytes
    n_images: int
    skipped: int
    data_dir: str
    split: str
    seconds: float
    notes: list[str] = field(default_factory=list)
    ranking: list[dict] = field(default_factory=list)
    n_faithfulness: int = 0

    def plots(self, kind: str) -> dict[str, str]:
        """Plot stems of one kind that were drawn: ``{"layers": stem, "accuracy": stem}`` (subset)."""
        out = {}
        for role, stem in (("layers", f"layers_{kind}"), ("accuracy", f"accuracy_vs_energy_{kind}")):
            if f"{stem}.png" in self.files:
                out[role] = stem
        return out


def run_app_analysis(models: Mapping[str, torch.nn.Module], data_dir: str | Path, *, split: str = "test",
                     n_images: int = 48, layers: str | Sequence[int] = "all", kinds: str | Sequence[str] = ("cls",),
                     batch_size: int = 16, device: str | torch.device | None = "auto",
                     progress: Optional[Progress] = None, faithfulness: bool = False, faithfulness_steps: int = 8,
                     faithfulness_max_images: Optional[int] = None, map_kinds: Optional[Sequence[str]] = None,
                     n_boot: int = 1000, title: Optional[str] = None, meta: Optional[dict] = None) -> AppAnalysis:
    """Analyse the first ``n_images`` usable images of a dataset split with every model, report in memory.

    Args:
        models: display name → model (the name fills the ``method`` column).
        data_dir: a folder :func:`toast_core.analysis.load_dataset` reads (default task, CUB, image folder
            with masks).
        split: dataset split. n_images: images to analyse (fewer when the split is smaller).
        layers, kinds, batch_size: as :func:`toast_core.analysis.run_analysis`.
        faithfulness: also rank ``map_kinds`` (default: every kind) of every model by deletion / insertion
            AUC, pointing game and energy (:mod:`toast_core.analysis.faithfulness`) on the first
            ``faithfulness_max_images`` images, with ``faithfulness_steps`` steps per curve.
        device: where to run (pass the device the models already live on: shared models are then not moved).
        progress: ``progress(done, total)`` in images × models, over all groups.
        n_boot: bootstrap resamples of the CIs. title: report title. meta: extra fields for ``run.json``.
    Returns:
        an :class:`AppAnalysis`. Images whose label is beyond a model's outputs (a model trained on
        another task) are skipped and counted, so every model sees the same images.
    Raises:
        InputError: no model, unreadable/unsuitable dataset (no masks), no usable image, bad options.
    """
    start = time.perf_counter()
    if not models:
        raise InputError("no model to analyse: load or select at least one model")
    kinds = analysis.parse_kinds(kinds)
    map_kinds = faithfulness_kinds(map_kinds) if faithfulness else []
    groups: dict[tuple, dict[str, torch.nn.Module]] = {}
    for name, model in models.items():
        groups.setdefault(_input_key(model), {})[name] = model
    data_dir = Path(data_dir)
    first = next(iter(groups.values()))
    probe = analysis.load_dataset(data_dir, split, model=next(iter(first.values())))
    classes = [c for c in (model_classes(m) for m in models.values()) if c]
    limit = min(classes) if classes else None
    indices, skipped = usable_indices(_labels(probe), n_images, limit)
    if not indices:
        raise InputError(f"no image of {data_dir} ({split}) has a class the models predict "
                         f"(they have {limit} classes)")
    notes = []
    if skipped:
        notes.append(f"{skipped} image(s) skipped: their class is beyond the {limit} outputs of the smallest model.")
    if len(indices) < n_images:
        notes.append(f"{len(indices)} usable images in the split (asked for {n_images}).")
    if len(groups) > 1:
        notes.append(f"The models expect {len(groups)} different input sizes or normalisations: each group "
                     "ran over the same images, resized and normalised for it.")
    n_faith = min(len(indices), faithfulness_max_images or len(indices)) if faithfulness else 0
    total = (len(indices) + n_faith) * len(models)
    rows: list[dict] = []
    frows: list[dict] = []
    done = 0
    for key, group in groups.items():
        ds = probe if group is first else analysis.load_dataset(data_dir, split, model=next(iter(group.values())))
        offset = done

        def cb(k: int, _n: int, offset=offset) -> None:
            if progress is not None:
                progress(offset + k, total)

        rows += analysis.run_analysis(group, _Subset(ds, indices), layers=layers, kinds=kinds,
                                      batch_size=batch_size, device=device, progress=cb, as_frame=False)
        done += len(indices) * len(group)
        if n_faith:
            frows += _faithfulness(group, _Subset(ds, indices[:n_faith]), rows, map_kinds, faithfulness_steps,
                                   min(batch_size, 8), device, lambda k, _n, o=done: cb(k, _n, o))
            done += n_faith * len(group)
    title = title or f"Attention analysis: {data_dir.name} ({split})"
    run_meta = dict(source="app", data=str(data_dir), split=split, n_images=len(indices), skipped=skipped,
                    layers=layers if isinstance(layers, str) else list(layers), kinds=kinds, device=str(device),
                    faithfulness=faithfulness, faithfulness_steps=faithfulness_steps,
                    faithfulness_max_images=faithfulness_max_images, faithfulness_map_kinds=map_kinds or None,
                    n_boot=n_boot,
                    models={n: getattr(m, "build_info", {}) for n, m in models.items()},
                    seconds=round(time.perf_counter() - start, 2), **(meta or {}))
    with tempfile.TemporaryDirectory(prefix="toast-analysis-") as tmp:
        analysis.write_report(rows, tmp, title=title, meta=run_meta, n_boot=n_boot, faithfulness_rows=frows,
                              faithfulness_steps=faithfulness_steps)
        files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    headline = {k: headline_records(rows, k, n_boot=n_boot) for k in kinds}
    ranking = ranking_display(frows, n_boot=n_boot) if frows else []
    return AppAnalysis(rows=rows, kinds=kinds, headline=headline, files=files, zip_bytes=zip_files(files),
                       n_images=len(indices), skipped=skipped, data_dir=str(data_dir), split=split,
                       seconds=time.perf_counter() - start, notes=notes, ranking=ranking, n_faithfulness=n_faith)


def faithfulness_kinds(spec: Optional[Sequence[str]] = None) -> list[str]:
    """The kinds the faithfulness ranking scores (default: every registered kind and ``random``)."""
    from .faithfulness import parse_map_kinds

    return parse_map_kinds(spec)


def _faithfulness(group, dataset, rows: list[dict], map_kinds, steps: int, batch_size: int, device,
                  progress: Progress) -> list[dict]:
    """Faithfulness rows of one model group; its ``cls`` values copied into the analysis ``rows``."""
    from .faithfulness import attach_to_rows, run_faithfulness

    frows = run_faithfulness(group, dataset, map_kinds, steps=steps, batch_size=batch_size, device=device,
                             progress=progress)
    attach_to_rows(rows, frows, {n: len(getattr(m, "vit", m).blocks) for n, m in group.items()})
    return frows


# ------------------------------------------------------------------------------------------------
# Display and packing
# ------------------------------------------------------------------------------------------------

def _fmt(t: tuple) -> str:
    mean, lo, hi = t
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def headline_records(rows, kind: str = "cls", n_boot: int = 1000) -> list[dict]:
    """The headline table of one map kind for display: ``method``, ``n``, then ``mean [lo, hi]`` strings.

    Columns that are undefined for every method (e.g. deletion AUC without faithfulness) are dropped.
    Returns: one dict per table row (TOAST's bottom-up pass as its own row).
    """
    table = analysis.headline_table(rows, kind, n_boot=n_boot)
    keys = [k for k, v in table[0].items() if isinstance(v, tuple) and len(v) == 3]
    keys = [k for k in HEADLINE_LABELS if k in keys] + [k for k in keys if k not in HEADLINE_LABELS]
    keys = [k for k in keys if any(math.isfinite(t[k][0]) for t in table)]
    return [{"method": t["method"], "images": t["n"], **{HEADLINE_LABELS.get(k, k): _fmt(t[k]) for k in keys}}
            for t in table]


def ranking_display(faith_rows, n_boot: int = 1000) -> list[dict]:
    """The faithfulness ranking for display: method, rank, kind, then ``mean [lo, hi]`` strings."""
    from ..maps import MAP_KINDS
    from .faithfulness import FAITH_METRICS, ranking_table

    out = []
    for t in ranking_table(faith_rows, n_boot=n_boot):
        rec = {"method": t["method"], "rank": t["rank"], "map kind": MAP_KINDS.get(t["kind"], t["kind"]),
               "images": t["n"]}
        rec.update({label: _fmt(t[m]) for m, label, _ in FAITH_METRICS})
        rec["gap to next"] = _fmt(t["gap"])
        rec["s / image"] = round(t["seconds"], 3)
        out.append(rec)
    return out


def zip_files(files: Mapping[str, bytes], folder: str = "analysis") -> bytes:
    """A deflated zip of ``name → bytes`` under ``folder/`` (fixed timestamps: same input, same bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(f"{folder}/{name}", date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name])
    return buf.getvalue()
