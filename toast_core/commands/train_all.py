"""``train-all``: train several methods on your own labelled folder (or a zip of it), one after another.

Writes ``$TOAST_HOME/datasets/<name>-<fingerprint>/<method>/`` (see
:mod:`toast_core.demo.dataset_run`): the same files the app's "Your data" page writes, so the app
shows these models under the dataset's name. The folder is scanned first; every problem is listed and
nothing trains while there is an error.

Examples::

    python -m toast_core train-all --data ~/data/birds --scan            # what is there, what is wrong
    python -m toast_core train-all --data ~/data/birds --estimate        # time per method on this machine
    python -m toast_core train-all --data birds.zip --methods linear,lora,toast --background
    python -m toast_core.demo.dataset_background status --dir ~/.cache/toast_core/datasets/birds-1a2b3c4d
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..backbones import DEFAULT_BACKBONE

    parser.add_argument("--data", required=True, help="dataset folder (ImageFolder layout) or a .zip of one")
    parser.add_argument("--name", default=None, help="the dataset's name (default: the folder's name)")
    parser.add_argument("--methods", default="", help="comma-separated methods (default: all seven)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="timm ViT name (default: offline DINOv2 ViT-S/14)")
    parser.add_argument("--pretrained", default="default", help="'default', 'random' or a local weights file")
    parser.add_argument("--backbone-kwargs", default=None, help="JSON dict passed to timm.create_model")
    parser.add_argument("--image-size", type=int, default=0, help="input side (default 224 = 16x16 patches; 112 trains ~4x faster on a CPU, 8x8 maps)")
    parser.add_argument("--epochs", type=int, default=0, help="budget per method (default: each recipe's own)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held out of train/ when there is no val/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage1", default=None, help="JSON dict of TOAST stage-1 settings (Stage1Config fields)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda ...")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--scan", action="store_true", help="only scan the folder and list its problems")
    what.add_argument("--estimate", action="store_true", help="only measure and print the time per method")
    what.add_argument("--background", action="store_true",
                      help="train in a background process (low priority; stop/resume as the app does)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def data_folder(path: str) -> Path:
    """A dataset folder: ``path`` itself, or a zip extracted (safely, once per content) under
    ``$TOAST_HOME/uploads/datasets/``."""
    from ..data.archive import extract_upload

    p = Path(path).expanduser()
    if p.is_file() and p.suffix.lower() == ".zip":
        folder = extract_upload(p, p.name)
        print(f"{p} extracted to {folder}")
        return folder
    return p


def spec_from_args(args, folder: Path):
    from ..demo.dataset_run import DatasetRunSpec
    from .train import parse_json_arg, pretrained_from_args

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return DatasetRunSpec(name=args.name or folder.name, data=str(folder), methods=methods, backbone=args.backbone,
                          pretrained=pretrained_from_args(args.pretrained),
                          backbone_kwargs=parse_json_arg(args.backbone_kwargs, "--backbone-kwargs"),
                          image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
                          seed=args.seed, val_fraction=args.val_fraction,
                          stage1=parse_json_arg(args.stage1, "--stage1") or {})


def _print_estimate(est: dict) -> None:
    from ..demo.background import format_seconds

    print(f"estimate on {est['device']} at {est['image_size']} px ({est['n_train']} train, {est['n_val']} val, "
          f"{est['n_test']} test images; one step measured on {est['measured_on']} images):")
    for m, e in est["methods"].items():
        print(f"  {m:<12} {e['epochs']:>3} epochs  {format_seconds(e['seconds'])}")
    print(f"  all          {format_seconds(est['seconds'])}")


def run(args) -> int:
    from ..data.scan import scan_folder
    from ..demo import dataset_run

    folder = data_folder(args.data)
    report = scan_folder(folder, check_images=True, val_fraction=args.val_fraction, seed=args.seed)
    print(report.summary())
    if args.scan:
        return 0 if report.ok else 1
    report.raise_if_unusable()
    spec = spec_from_args(args, folder)
    if args.estimate:
        _print_estimate(dataset_run.estimate(spec, device=args.device, report=report))
        return 0
    if args.background:
        from ..demo import dataset_background

        got = dataset_background.start(spec, device=args.device)
        print(json.dumps(got))
        return 0 if got["started"] else 1
    results = dataset_run.train_dataset(spec, device=args.device, progress=not args.quiet, echo=True)
    print(f"checkpoints in {results['dir']}")
    print(json.dumps({m: {k: r.get(k) for k in ("test_acc", "val_acc", "cached")}
                      for m, r in results["methods"].items()}))
    return 0

