"""``analyze``: measure where each method's attention lands over an annotated dataset, in batch.

Examples::

    python -m toast_core analyze --demo --out runs/analysis                    # the seven default models
    python -m toast_core analyze --checkpoints a.safetensors b.safetensors --data CUB_200_2011 --out out
    python -m toast_core analyze --quick --out /tmp/smoke                       # tiny untrained models

Writes ``rows.csv`` (one row per image × method × pass × layer × map kind), ``summary.csv``,
``layer_average.csv``, ``summary.md``, plots (PNG + PDF) and ``run.json`` into ``--out``; with
``--faithfulness`` also ``faithfulness_rows.csv``, ``faithfulness_ranking.csv`` and its plot, every map
kind ranked per method (:mod:`toast_core.analysis.faithfulness`)::

    python -m toast_core analyze --demo --fresh-seed 20261201 --layers last --faithfulness \
        --faithfulness-max-images 20 --out runs/faithfulness
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import InputError

#: the tiny backbone of --quick without checkpoints (random weights, milliseconds per batch)
QUICK_SPEC = dict(backbone="vit_tiny_patch16_224", img_size=32,
                  backbone_kwargs=dict(patch_size=8, depth=3, embed_dim=32, num_heads=2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("models (one of)")
    src.add_argument("--checkpoints", nargs="+", metavar="PATH", help="checkpoint files to compare")
    src.add_argument("--demo", action="store_true", help="the seven default checkpoints under TOAST_HOME/demo/")
    parser.add_argument("--data", metavar="DIR", help="annotated dataset: default-task folder (manifest.json), "
                        "CUB-200-2011 folder, or an image folder with masks (default with --demo: the default task)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--fresh-seed", type=int, metavar="N",
                        help="analyse a freshly generated test split of the default task with seed N (a seed "
                             "never used for training: the checkpoints' task uses seed 0)")
    parser.add_argument("--fresh-images", type=int, default=300, help="images in the --fresh-seed split")
    parser.add_argument("--layers", default="all", help="'all', 'last' or 0-based indices such as 0,5,11")
    parser.add_argument("--kinds", default="cls,rollout,token_norm", help="map kinds, comma-separated")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="'auto' (GPU when present), 'cpu', 'cuda', 'cuda:1'...")
    parser.add_argument("--max-images", type=int, metavar="N", help="analyse only the first N images")
    parser.add_argument("--faithfulness", action="store_true",
                        help="also rank every map kind of every method by deletion/insertion AUC, pointing game "
                             "and energy on the target (2*(steps+1) forwards per image, model and kind, plus "
                             "the map; fills the cls rows' deletion/insertion columns too)")
    parser.add_argument("--map-kinds", default="all", metavar="K,K,...",
                        help="map kinds the faithfulness ranking scores (default all: every registered kind "
                             "and 'random', the chance reference)")
    parser.add_argument("--faithfulness-steps", type=int, default=8,
                        help="points per deletion/insertion curve - 1 (default 8)")
    parser.add_argument("--faithfulness-max-images", type=int, metavar="N",
                        help="rank on the first N images only (they cost the most; --quick: 2)")
    parser.add_argument("--td-scales", metavar="S,S,...",
                        help="TOAST models only: analyse each at these top-down scales (e.g. 0,0.5,1,2)")
    parser.add_argument("--tolerance-px", type=float, help="pointing-game tolerance (default 15 px at 224 px)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    parser.add_argument("--quick", action="store_true", help="smoke run: at most 12 images; without models, "
                        "seven tiny untrained ones; without --data, a tiny generated default task")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def demo_checkpoints() -> list[Path]:
    """The default models' checkpoints (``toast_home()/demo/<method>/``, written by ``prepare-demo``)."""
    from ..demo import demo_checkpoint_paths, demo_dir

    found = demo_checkpoint_paths()
    if not found:
        raise InputError(f"no default checkpoints under {demo_dir()}; run `python -m toast_core prepare-demo` first")
    from .. import available_methods

    missing = [m for m in available_methods() if m not in found]
    if missing:
        print(f"note: no default checkpoint for {', '.join(missing)} yet", file=sys.stderr)
    return list(found.values())


def _checkpoint_task_dir(models: dict) -> Path | None:
    """The default-task folder the first checkpoint was trained on: its recorded path when that still
    holds the task, else the task regenerated from the recorded config; None when none is recorded."""
    from ..data import DemoTaskConfig, ensure_demo_task, is_valid_demo_task

    for m in models.values():
        info = getattr(m, "checkpoint_info", None) or {}
        data = info.get("data") if isinstance(info.get("data"), dict) else {}
        cfg = data.get("task_config")
        config = DemoTaskConfig.from_dict(cfg) if isinstance(cfg, dict) else None
        path = data.get("dataset")
        if path and is_valid_demo_task(path, config):
            return Path(path)
        if config is not None:
            return ensure_demo_task(config)
    return None


def _fresh_task_dir(models: dict, seed: int, n: int) -> Path:
    """A test split of the default task (the checkpoints' task config when recorded) with another seed."""
    import dataclasses

    from ..data import DemoTaskConfig, ensure_demo_task

    base = DemoTaskConfig()
    for m in models.values():
        data = (getattr(m, "checkpoint_info", None) or {}).get("data")
        if isinstance(data, dict) and isinstance(data.get("task_config"), dict):
            base = DemoTaskConfig.from_dict(data["task_config"])
            break
    if seed == base.seed:
        raise InputError(f"--fresh-seed {seed} is the seed the checkpoints were trained on; pick another")
    return ensure_demo_task(dataclasses.replace(base, seed=seed, n_train=1, n_val=0, n_test=n))


def _models_from_checkpoints(paths: list[Path]) -> dict:
    from ..io.checkpoints import load_checkpoint

    models = {}
    for p in paths:
        if not p.exists():
            raise InputError(f"checkpoint {p} does not exist")
        model = load_checkpoint(p)
        name = (getattr(model, "build_info", None) or {}).get("method") or p.stem
        if name in models:
            name = f"{name}:{p.parent.name if p.name == 'model.safetensors' else p.stem}"
        models[name] = model
    return models


def _quick_models(num_classes: int) -> dict:
    import torch

    from .. import available_methods, build_model

    models = {}
    for method in available_methods():
        torch.manual_seed(0)
        models[method] = build_model(method, num_classes=num_classes, pretrained=False, **QUICK_SPEC)
    return models


def _default_task_dir(quick: bool, out: Path) -> Path:
    from ..data import DemoTaskConfig, ensure_demo_task
    from ..data.demo_task import generate_demo_task

    if quick:
        return generate_demo_task(out / "quick_task", DemoTaskConfig.quick(), workers=1)
    return ensure_demo_task()


def _td_variants(models: dict, spec: str) -> tuple[dict, dict]:
    try:
        scales = [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--td-scales must be comma-separated numbers, got {spec!r}") from None
    out, fkw = {}, {}
    for name, model in models.items():
        if model.has_top_down and scales:
            for s in scales:
                out[f"{name}@td{s:g}"] = model
                fkw[f"{name}@td{s:g}"] = {"td_scale": s}
        else:
            out[name] = model
    return out, fkw


def _inputs(args, out: Path, max_images):
    """(checkpoint paths, models, dataset folder, dataset) the arguments name."""
    from .. import analysis

    ckpts = [Path(p) for p in args.checkpoints] if args.checkpoints else (demo_checkpoints() if args.demo else [])
    models = _models_from_checkpoints(ckpts) if ckpts else {}
    if args.fresh_seed is not None:
        data_dir = _fresh_task_dir(models, args.fresh_seed, args.fresh_images)
        args.split = "test"
    elif args.data:
        data_dir = Path(args.data)
    elif args.checkpoints:
        data_dir = _checkpoint_task_dir(models)
        if data_dir is None:
            raise InputError("--data DIR is needed: the checkpoints name no default-task folder that exists here")
    else:
        data_dir = (_checkpoint_task_dir(models) if args.demo else None) or _default_task_dir(args.quick and not args.demo, out)
    if not models:
        probe = analysis.load_dataset(data_dir, args.split)
        n_classes = getattr(probe, "num_classes", None) or max(probe[i]["label"] for i in range(len(probe))) + 1
        models = _quick_models(int(n_classes))
    first = next(iter(models.values()))
    size = analysis.model_input_size(first)
    for name, m in models.items():
        if analysis.model_input_size(m) != size:
            raise InputError(f"models expect different input sizes ({name}: {analysis.model_input_size(m)}, "
                             f"first: {size}); analyse them in separate runs")
    dataset = analysis.load_dataset(data_dir, args.split, model=first, max_images=max_images)
    return ckpts, models, data_dir, dataset


def run(args) -> int:
    from ..analysis import distributed

    with distributed.session(args.device) as ctx:  # one process, or this rank of a torchrun job
        return _run(args, ctx)


def _run(args, ctx) -> int:
    from .. import analysis
    from ..analysis import distributed
    from ..cache import toast_home

    start = time.perf_counter()
    out = Path(args.out)
    if args.checkpoints and args.demo:
        raise InputError("give --checkpoints or --demo, not both")
    if not (args.checkpoints or args.demo or args.quick):
        raise InputError("choose models: --checkpoints PATH ..., --demo, or --quick (tiny untrained models)")
    if args.batch_size < 1:
        raise InputError("--batch-size must be >= 1")
    kinds = analysis.parse_kinds(args.kinds)
    if args.faithfulness:  # fail before the long part
        from ..analysis.faithfulness import parse_map_kinds
        parse_map_kinds(args.map_kinds)
    max_images = args.max_images if args.max_images is not None else (12 if args.quick else None)
    with distributed.main_first(ctx):  # rank 0 first: it may write the generated task or the default backbone
        ckpts, models, data_dir, dataset = _inputs(args, out, max_images)
    size = analysis.model_input_size(next(iter(models.values())))
    fkw = {}
    if args.td_scales:
        models, fkw = _td_variants(models, args.td_scales)
    device = analysis.resolve_device(args.device, local_rank=ctx.local_rank)  # under torchrun: this rank's GPU
    if ctx.is_main:
        print(f"analysing {len(models)} model(s) on {len(dataset)} images of {data_dir} ({args.split}), "
              f"{size}px, device {device}" + (f", {ctx.world} processes" if ctx.world > 1 else ""), file=sys.stderr)
    bar = None
    if not args.no_progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset) * len(models), unit="img", desc="analyze", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total  # this rank's share under torchrun
            bar.update(done - bar.n)

    try:
        rows = distributed.run_sharded(
            ctx, models, dataset, layers=args.layers, kinds=kinds, batch_size=args.batch_size, device=device,
            progress=progress, forward_kwargs=fkw,
            tolerance_px=args.tolerance_px)
    finally:
        if bar is not None:
            bar.close()
    if rows is None:  # another rank of a torchrun job: rank 0 writes everything
        return 0
    frows, steps = _faithfulness(args, models, dataset, fkw, device, rows) if args.faithfulness else (None, None)
    meta = dict(command="analyze", data=str(data_dir), split=args.split, n_images=len(dataset), image_size=size,
                layers=args.layers, kinds=kinds, device=str(device), batch_size=args.batch_size,
                checkpoints=[str(p) for p in ckpts], models={n: getattr(m, "build_info", {}) for n, m in models.items()},
                forward_kwargs=fkw, faithfulness=args.faithfulness, faithfulness_steps=steps,
                faithfulness_map_kinds=sorted({r["kind"] for r in frows or []}) or None,
                faithfulness_max_images=args.faithfulness_max_images, quick=args.quick, toast_home=str(toast_home()),
                processes=ctx.world, seconds=round(time.perf_counter() - start, 1), versions=_versions())
    written = analysis.write_report(rows, out, title=f"Attention analysis: {data_dir.name} ({args.split})",
                                    meta=meta, n_boot=args.bootstrap, faithfulness_rows=frows,
                                    faithfulness_steps=steps)
    print((out / "summary.md").read_text())
    for key, paths in written.items():
        print(f"{key}: " + ", ".join(str(p) for p in paths), file=sys.stderr)
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def _faithfulness(args, models: dict, dataset, fkw: dict, device, rows: list) -> tuple[list, int]:
    """The faithfulness ranking's rows (its cls values copied into ``rows``) and the steps used.

    Under torchrun it runs on rank 0 alone, after the sharded analysis."""
    from ..analysis import faithfulness

    kinds = faithfulness.parse_map_kinds(args.map_kinds)
    steps = 4 if args.quick and args.faithfulness_steps == 8 else args.faithfulness_steps
    limit = args.faithfulness_max_images if args.faithfulness_max_images is not None else (2 if args.quick else None)
    n = len(dataset) if limit is None else min(len(dataset), limit)
    print(f"faithfulness: {len(kinds)} map kinds x {len(models)} models x {n} images, {steps} steps", file=sys.stderr)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=n * len(models), unit="img", desc="faithfulness", file=sys.stderr)
    try:
        frows = faithfulness.run_faithfulness(
            models, dataset, kinds, steps=steps, max_images=n,
            batch_size=min(args.batch_size, 8), device=device, forward_kwargs=fkw, tolerance_px=args.tolerance_px,
            progress=None if bar is None else (lambda done, total: bar.update(done - bar.n)))
    finally:
        if bar is not None:
            bar.close()
    depths = {name: len(getattr(m, "vit", m).blocks) for name, m in models.items()}
    faithfulness.attach_to_rows(rows, frows, depths)
    return frows, steps


def _versions() -> dict:
    import platform

    import numpy
    import timm
    import torch

    from .. import __version__

    return dict(toast_core=__version__, torch=torch.__version__, timm=timm.__version__, numpy=numpy.__version__,
                python=platform.python_version())
