"""A "dataset run": train several transfer methods, one after another, on a user's labelled folder.

A run is described by :class:`DatasetRunSpec` (dataset name, folder, methods, backbone, input size,
budget) and writes into its own directory, never into the default models' or another dataset's::

    toast_home()/datasets/<name>-<fingerprint>/      fingerprint: 8 hex digits of the class names + folder
        run.json                 the spec, the classes, what the scan found
        pretune/                 TOAST stage 1 (the shipped fit for the default backbone, else fitted here)
        <method>/model.safetensors (+ config.json, last.safetensors)   one checkpoint per method
        results.json             test/val accuracy and time per method
        previous/<method>-<time>/  a complete checkpoint trained with other settings, kept when replaced

Checkpoints are written atomically by the trainer (:mod:`toast_core.io.checkpoints`): a method's
``model.safetensors`` appears only when complete. A complete checkpoint with the same settings is kept (a
second run only reports); an interrupted method resumes from its last saved state.

Recipes are the default task's (:func:`toast_core.demo.plan_for`): the same learning rates and parameter
groups, with the budget (epochs) per method from the plan of this device unless the spec sets one.
:func:`estimate` measures one training step per method on a few of the folder's images and extrapolates.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from ..backbones import DEFAULT_BACKBONE
from ..cache import atomic_write_bytes, toast_home
from ..data.scan import slug
from ..errors import InputError, TrainingStopped

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
#: input side on a CPU / a GPU when the spec leaves it open (multiples of the default backbone's patch 14)
#: the input side when none is chosen: 224 px (16×16 patches) on every device; 112 is the fast option
#: (8×8 maps, about 4× less training time on a CPU)
CPU_IMAGE_SIZE, GPU_IMAGE_SIZE = 224, 224


@dataclass(frozen=True)
class DatasetRunSpec:
    """What to train on which folder.

    Attributes:
        name: the dataset's name (shown in the app; its :func:`slug` names the directory).
        data: the dataset folder (layout of :mod:`toast_core.data.folder`).
        methods: in the order trained (default: all seven).
        backbone: timm name (default: the offline DINOv2 ViT-S/14). pretrained: as ``build_model``'s.
        backbone_kwargs: passed to timm (tests use tiny backbones).
        image_size: input side (0: 224; 112 trains about 4× faster on a CPU, with 8×8 maps).
        epochs: the budget, for every method (0: each recipe's own: 8, full fine-tuning 3 on a CPU).
        batch_size, seed, val_fraction: as for ``train``.
        stage1: TOAST stage-1 settings as a dict of :class:`~toast_core.training.pretune.Stage1Config`
            fields (empty: the defaults; the shipped fit is installed when it fits the backbone).
    """

    name: str
    data: str
    methods: tuple = ()
    backbone: str = DEFAULT_BACKBONE
    pretrained: Any = True
    backbone_kwargs: Optional[dict] = None
    image_size: int = 0
    epochs: int = 0
    batch_size: int = 32
    seed: int = 0
    val_fraction: float = 0.1
    stage1: dict = field(default_factory=dict)

    def __post_init__(self):
        from ..methods import available_methods

        slug(self.name)
        methods = tuple(self.methods) or tuple(available_methods())
        unknown = sorted(set(methods) - set(available_methods()))
        if unknown:
            raise InputError(f"unknown method(s) {unknown}; available: {', '.join(available_methods())}")
        if len(set(methods)) != len(methods):
            raise InputError(f"a method is listed twice: {list(methods)}")
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "data", str(Path(self.data).expanduser().resolve()))
        if self.epochs < 0 or self.batch_size < 1 or self.image_size < 0:
            raise InputError("epochs and image_size must be >= 0 and batch_size >= 1")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetRunSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if k == "methods" else v for k, v in d.items() if k in names})

    def resolved(self, device: torch.device) -> "DatasetRunSpec":
        """The spec with the input size fixed for ``device``."""
        if self.image_size:
            return self
        return dataclasses.replace(self, image_size=GPU_IMAGE_SIZE if device.type == "cuda" else CPU_IMAGE_SIZE)


def datasets_home() -> Path:
    """``toast_home()/datasets``: every dataset run's directory lives here."""
    return toast_home() / "datasets"


def run_dir(spec: DatasetRunSpec, fingerprint: Optional[str] = None) -> Path:
    """``datasets_home()/<slug(name)>-<fingerprint>`` (the fingerprint of the folder's scan by default)."""
    if fingerprint is None:
        from ..data.scan import scan_folder

        fingerprint = scan_folder(spec.data, check_images=False).fingerprint
    return datasets_home() / f"{slug(spec.name)}-{fingerprint}"


def recipes_for(spec: DatasetRunSpec, device: torch.device) -> dict:
    """method -> :class:`~toast_core.demo.MethodRecipe` with the spec's budget."""
    from .plans import plan_for

    plan = plan_for(device) if device.type == "cuda" else plan_for("cpu")
    recipes = {r.method: r for r in plan.recipes}
    return {m: dataclasses.replace(recipes[m], epochs=spec.epochs or recipes[m].epochs) for m in spec.methods}


# ------------------------------------------------------------------------------------------------
# Reading what a run left (the app, the command line)
# ------------------------------------------------------------------------------------------------

def read_run(directory: str | os.PathLike) -> Optional[dict]:
    """``run.json`` of a dataset run directory (None when absent or unreadable)."""
    try:
        d = json.loads((Path(directory) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def complete_checkpoints(directory: str | os.PathLike) -> dict[str, Path]:
    """method -> weights file of the complete checkpoints in a dataset run directory, in the run's order."""
    from ..io.checkpoints import is_complete_checkpoint
    from ..methods import available_methods

    d = Path(directory)
    order = list((read_run(d) or {}).get("spec", {}).get("methods") or available_methods())
    return {m: d / m / "model.safetensors" for m in order if is_complete_checkpoint(d / m)}


def list_runs(home: Optional[str | os.PathLike] = None) -> list[dict]:
    """Every dataset run under ``datasets_home()``: ``{"dir", "name", "classes", "methods", "complete"}``,
    newest first."""
    root = Path(home) if home is not None else datasets_home()
    out = []
    for d in sorted(root.glob("*/" + RUN_FILE)):
        run = read_run(d.parent)
        if not run:
            continue
        spec = run.get("spec") or {}
        out.append({"dir": str(d.parent), "name": spec.get("name"), "classes": run.get("classes", []),
                    "methods": spec.get("methods", []), "created": run.get("created", 0),
                    "complete": list(complete_checkpoints(d.parent))})
    return sorted(out, key=lambda r: -float(r["created"] or 0))


# ------------------------------------------------------------------------------------------------
# Data, hashes, stage 1
# ------------------------------------------------------------------------------------------------

def load_data(spec: DatasetRunSpec):
    """(train, val, test-or-None, class names, mean, std) of the spec's folder at its input size."""
    from ..data.folder import load_datasets

    mean, std = load_data_config(spec)
    tr, va, te, classes = load_datasets(spec.data, spec.image_size, mean, std, True, spec.val_fraction, spec.seed)
    return tr, va, te, classes, mean, std


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ensure_stage1(spec: DatasetRunSpec, directory: Path, device: torch.device, progress=None) -> Path:
    """TOAST's stage 1 for the spec's backbone in ``directory/pretune`` (kept when complete and of these
    settings): the shipped fit when it fits the backbone, else a least-squares fit here."""
    from .shipped import install_stage1, shipped_stage1_fits
    from ..io.checkpoints import is_complete_checkpoint, read_checkpoint_info
    from ..training.pretune import Stage1Config, pretune_least_squares

    s1 = Stage1Config(**{"image_size": spec.image_size, **spec.stage1})
    key = _hash({"backbone": spec.backbone, "kwargs": spec.backbone_kwargs, "pretrained": spec.pretrained,
                 "stage1": s1.to_dict()})
    out = directory / "pretune"
    if is_complete_checkpoint(out) and read_checkpoint_info(out).get("dataset_hash") == key:
        return out
    if spec.backbone == DEFAULT_BACKBONE and spec.pretrained is True and not spec.backbone_kwargs:
        from ..default_backbone import default_backbone_sha256, ensure_default_backbone

        ensure_default_backbone()
        if shipped_stage1_fits(s1, default_backbone_sha256()):  # same settings, input size included
            install_stage1(out, meta={"dataset_hash": key})
            return out
    pretune_least_squares(out, config=s1, backbone=spec.backbone, pretrained=spec.pretrained,
                          backbone_kwargs=spec.backbone_kwargs, meta={"dataset_hash": key}, device=str(device),
                          progress=progress)
    return out


def _keep_previous(method_dir: Path, directory: Path) -> Optional[Path]:
    """Move a complete checkpoint trained with other settings to ``previous/`` (never lost)."""
    dst = directory / "previous" / f"{method_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(method_dir), str(dst))
    return dst


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------

def _notify(callbacks: Iterable[Any], method: str, state: str, info: dict) -> None:
    """``on_method(method, state, info)`` of the callbacks that have it (state: "start", "done", "kept")."""
    for cb in callbacks:
        fn = getattr(cb, "on_method", None)
        if callable(fn):
            fn(method, state, info)


def prepare_run(spec: DatasetRunSpec, device: torch.device, check_images: bool | int = True) -> tuple[Path, Any]:
    """Scan the folder (every problem → :class:`InputError`), create the run directory and write
    ``run.json``. Returns (directory, scan report)."""
    from ..data.scan import scan_folder

    report = scan_folder(spec.data, check_images=check_images, val_fraction=spec.val_fraction, seed=spec.seed)
    report.raise_if_unusable()
    directory = run_dir(spec, report.fingerprint)
    write_run_record(directory, spec, report, str(device))
    return directory, report


def write_run_record(directory: Path, spec: DatasetRunSpec, report, device: str) -> None:
    """``run.json``: the spec, the classes and the scan (the creation time of an earlier record is kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    previous = read_run(directory) or {}
    record = {"spec": spec.to_dict(), "classes": report.classes, "fingerprint": report.fingerprint,
              "device": device, "created": previous.get("created", time.time()), "updated": time.time(),
              "scan": {k: v for k, v in report.to_dict().items() if k != "samples"}}
    atomic_write_bytes(directory / RUN_FILE, (json.dumps(record, indent=1) + "\n").encode())


def _train_one(spec: DatasetRunSpec, recipe, data: tuple, directory: Path, base: dict, device: torch.device,
               callbacks: list, progress: bool) -> dict:
    """Train one method into ``directory/<method>`` unless a complete checkpoint of these settings is there."""
    from ..io.checkpoints import build_without_init, is_complete_checkpoint, read_checkpoint_info
    from ..training.pretune import init_from_pretuned
    from ..training.trainer import TrainConfig, train

    tr, va, te, classes = data
    method_dir = directory / recipe.method
    rec = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in ("lr_scales", "relative_lr") or v}
    m_hash = _hash({**base, "recipe": rec})
    t0 = time.perf_counter()
    if is_complete_checkpoint(method_dir):
        if read_checkpoint_info(method_dir).get("dataset_hash") == m_hash:
            kept = {"cached": True, **_summary(method_dir)}
            _notify(callbacks, recipe.method, "kept", kept)
            return kept
        _keep_previous(method_dir, directory)
    _notify(callbacks, recipe.method, "start", {"epochs": recipe.epochs, "n_train": len(tr)})
    torch.manual_seed(spec.seed)
    model = build_without_init(recipe.method, backbone=spec.backbone, num_classes=len(classes),
                               pretrained=spec.pretrained, img_size=spec.image_size,
                               backbone_kwargs=spec.backbone_kwargs, **dict(recipe.options))
    meta = {"classes": classes, "dataset_hash": m_hash, "recipe": rec,
            "dataset_run": {"name": spec.name, "dir": str(directory)},
            "data": {"dataset": spec.data, "image_size": spec.image_size, "n_train": len(tr), "n_val": len(va),
                     "n_test": len(te) if te is not None else 0, "manifest_sha256": tr.manifest_sha256,
                     "resize": "whole image, bilinear", "mean": list(base["mean"]), "std": list(base["std"])}}
    if recipe.pretuned:
        meta["pretuned_from"] = init_from_pretuned(model, directory / "pretune")
    cfg = TrainConfig(epochs=recipe.epochs, batch_size=spec.batch_size, lr=recipe.lr, optimizer=recipe.optimizer,
                      weight_decay=recipe.weight_decay, head_lr_scale=recipe.head_lr_scale,
                      lr_scales=tuple(recipe.lr_scales), relative_lr=tuple(recipe.relative_lr),
                      warmup_epochs=recipe.warmup_epochs, device=str(device), seed=spec.seed)
    result = train(model, tr, va, cfg, method_dir, test_data=te, meta=meta, callbacks=callbacks, resume="auto",
                   progress=progress)
    if result.stopped:
        raise TrainingStopped(f"{recipe.method}: stopped at step {result.steps}; starting the run again resumes "
                              f"from {method_dir / 'last.safetensors'}")
    info = {"cached": False, "seconds": round(time.perf_counter() - t0, 1), **_summary(method_dir)}
    _notify(callbacks, recipe.method, "done", info)
    return info


def _summary(method_dir: Path) -> dict:
    from ..io.checkpoints import read_checkpoint_info

    info = read_checkpoint_info(method_dir)
    hist = info.get("history") or [{}]
    return {"test_acc": (info.get("test") or {}).get("accuracy"), "val_acc": hist[-1].get("val_acc"),
            "train_seconds": info.get("train_seconds"), "share": (info.get("parameters") or {}).get("share"),
            "epochs": len(info.get("history") or []), "checkpoint": info["path"]}


def train_dataset(spec: DatasetRunSpec, device: str = "auto", callbacks: Iterable[Any] = (), progress: bool = False,
                  echo: bool = False, check_images: bool | int = True) -> dict:
    """Train every method of ``spec`` on its folder, one after another (see the module docstring).

    Args:
        spec: the run. device: "auto", "cpu", "cuda"...
        callbacks: trainer callbacks (``on_step``, ``on_epoch``, ``on_message``) and ``on_method(method,
            state, info)`` (state "start", "done" or "kept").
        progress: tqdm bars; echo: print one line per method.
        check_images: decode every image while scanning (see :func:`toast_core.data.scan.scan_folder`).
    Returns:
        the results also written to ``results.json``: ``{"dir", "name", "classes", "methods": {m: {...}}}``.
    Raises:
        InputError: the folder has problems (every one is listed). TrainingStopped: a callback stopped the
        run (the state is saved; running again resumes).
    """
    from ..io.checkpoints import read_checkpoint_info
    from ..training.trainer import resolve_device

    dev = resolve_device(device)
    spec = spec.resolved(dev)
    directory, report = prepare_run(spec, dev, check_images)
    callbacks = list(callbacks)
    recipes = recipes_for(spec, dev)
    tr, va, te, classes, mean, std = load_data(spec)
    base = {"spec": {k: v for k, v in spec.to_dict().items() if k not in ("name", "methods", "epochs")},
            "train": tr.manifest_sha256, "val": va.manifest_sha256, "test": getattr(te, "manifest_sha256", None),
            "mean": mean, "std": std}
    if any(r.pretuned for r in recipes.values()):
        ensure_stage1(spec, directory, dev)
        base["pretune"] = read_checkpoint_info(directory / "pretune").get("run_hash")
    results = {"dir": str(directory), "name": spec.name, "classes": classes, "device": str(dev),
               "image_size": spec.image_size, "methods": {}}
    for recipe in recipes.values():
        res = _train_one(spec, recipe, (tr, va, te, classes), directory, base, dev, callbacks, progress)
        results["methods"][recipe.method] = res
        if echo:
            acc = res.get("test_acc") if res.get("test_acc") is not None else res.get("val_acc")
            print(f"[{spec.name}] {recipe.method}: {'kept' if res['cached'] else 'trained'} "
                  f"({recipe.epochs} epochs on {len(tr)} images), accuracy "
                  f"{'-' if acc is None else f'{100 * acc:.1f}%'}", flush=True)
    atomic_write_bytes(directory / RESULTS_FILE, (json.dumps(results, indent=1) + "\n").encode())
    return results


# ------------------------------------------------------------------------------------------------
# Time estimate
# ------------------------------------------------------------------------------------------------

def measure_method(spec: DatasetRunSpec, method: str, images: torch.Tensor, labels: torch.Tensor,
                   device: torch.device, num_classes: int) -> dict:
    """Seconds per image of one training step (forward, backward, AdamW) and of one evaluation forward,
    measured on ``images`` (after one untimed warm-up step)."""
    import torch.nn.functional as F

    from ..io.checkpoints import build_without_init
    from ..training.trainer import is_head_only

    torch.manual_seed(spec.seed)
    model = build_without_init(method, backbone=spec.backbone, num_classes=num_classes, pretrained=spec.pretrained,
                               img_size=spec.image_size, backbone_kwargs=spec.backbone_kwargs).to(device)
    x, y = images.to(device), labels.to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    model.train()
    for _ in range(2):
        t = time.perf_counter()
        logits, extra = model.training_outputs(x, "tune")
        loss = F.cross_entropy(logits, y) + sum(extra.values(), torch.zeros((), device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    model.eval()
    t = time.perf_counter()
    with torch.no_grad():
        model(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    n = len(x)
    return {"train_per_image": times[-1] / n, "eval_per_image": (time.perf_counter() - t) / n,
            "head_only": is_head_only(model)}


def estimate_seconds(epochs: int, n_train: int, n_val: int, n_test: int, per_image: dict, head_only: bool) -> float:
    """Seconds one method's training takes: a pure function of the measured per-image costs. A head-only
    method (the linear probe) trains on features computed once per image; the others run ``epochs``
    training passes, an evaluation of the validation split per epoch and one of the test split."""
    ev = per_image["eval_per_image"]
    if head_only:
        return (n_train + n_val + n_test) * ev
    return epochs * (n_train * per_image["train_per_image"] + n_val * ev) + n_test * ev


def estimate(spec: DatasetRunSpec, device: str = "auto", n_images: int = 8, report=None) -> dict:
    """How long the run takes on this machine: one step per method measured on ``n_images`` of the folder's
    training images, extrapolated to its split sizes and the budget.

    Returns:
        ``{"methods": {m: {"epochs", "seconds", "train_per_image", "eval_per_image"}}, "seconds": total,
        "n_train", "n_val", "n_test", "image_size", "device", "measured_on": n}``. TOAST's trainer skips the
        frozen bottom-up pass on a CPU once it has seen an image, so its figure is an upper bound.
    """
    from ..data.folder import ImageFolderDataset
    from ..data.scan import scan_folder
    from ..training.trainer import resolve_device

    dev = resolve_device(device)
    spec = spec.resolved(dev)
    report = report or scan_folder(spec.data, check_images=False, val_fraction=spec.val_fraction, seed=spec.seed)
    report.raise_if_unusable()
    counts = {s: report.splits[s].n_images if s in report.splits else 0 for s in ("train", "val", "test")}
    mean, std = load_data_config(spec)
    ds = ImageFolderDataset(spec.data, "train", spec.image_size, mean, std, val_fraction=spec.val_fraction,
                            seed=spec.seed)
    picks = [round(i * (len(ds) - 1) / max(n_images - 1, 1)) for i in range(min(n_images, len(ds)))]
    items = [ds[i] for i in picks]
    images = torch.stack([it["image"] for it in items])
    labels = torch.tensor([it["label"] for it in items])
    out = {"methods": {}, "image_size": spec.image_size, "device": str(dev), "measured_on": len(items), **{
        f"n_{k}": v for k, v in counts.items()}}
    for method, recipe in recipes_for(spec, dev).items():
        per = measure_method(spec, method, images, labels, dev, len(report.classes))
        head_only = per.pop("head_only")
        secs = estimate_seconds(recipe.epochs, counts["train"], counts["val"], counts["test"], per, head_only)
        out["methods"][method] = {"epochs": recipe.epochs, "seconds": round(secs, 1),
                                  **{k: round(v, 5) for k, v in per.items()}}
    out["seconds"] = round(sum(m["seconds"] for m in out["methods"].values()), 1)
    return out


def load_data_config(spec: DatasetRunSpec) -> tuple[tuple, tuple]:
    """(mean, std) of the spec's backbone (built on the meta device: no weights)."""
    from ..models import build_model, data_config

    with torch.device("meta"):
        probe = build_model("linear", backbone=spec.backbone, num_classes=2, pretrained=False,
                            img_size=spec.image_size, backbone_kwargs=spec.backbone_kwargs)
    dc = data_config(probe)
    return tuple(dc["mean"]), tuple(dc["std"])
