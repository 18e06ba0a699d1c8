"""``train``: train one method on your own dataset (ImageFolder layout, or a demo-task directory).

Dataset layout (see :mod:`toast_core.data.folder`)::

    DIR/train/<class>/*.jpg   DIR/val/<class>/*.jpg (optional)   DIR/test/<class>/*.jpg (optional)
    DIR/masks/<split>/<class>/<name>.png (optional)   DIR/boxes.json (optional)

Several processes: ``torchrun --nproc_per_node N -m toast_core train ...`` (DDP; rank 0 writes).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..backbones import DEFAULT_BACKBONE
from ..data.folder import load_datasets


def add_common_training_arguments(parser: argparse.ArgumentParser, epochs: int = 10, lr: float = 1e-3) -> None:
    """Options shared by ``train`` and ``pretune``."""
    g = parser.add_argument_group("model")
    g.add_argument("--backbone", default=DEFAULT_BACKBONE, help="timm ViT name (default: the offline DINOv2 ViT-S/14)")
    g.add_argument("--pretrained", default="default",
                   help="'default' (offline weights for the default backbone, timm's for others), 'random', "
                        "or a path to a local weights file")
    g.add_argument("--image-size", type=int, default=224, help="input side in pixels")
    g.add_argument("--backbone-kwargs", default=None, help="JSON dict passed to timm.create_model")
    o = parser.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=epochs)
    o.add_argument("--batch-size", type=int, default=32)
    o.add_argument("--lr", type=float, default=lr)
    o.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    o.add_argument("--weight-decay", type=float, default=1e-4)
    o.add_argument("--head-lr-scale", type=float, default=1.0)
    o.add_argument("--warmup-epochs", type=float, default=1.0)
    o.add_argument("--label-smoothing", type=float, default=0.0)
    o.add_argument("--grad-clip", type=float, default=1.0)
    o.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto")
    r = parser.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    r.add_argument("--save-every-steps", type=int, default=0)
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def train_config_from_args(args, stage: str = "tune"):
    from ..training.trainer import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                       weight_decay=args.weight_decay, head_lr_scale=args.head_lr_scale,
                       warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                       grad_clip=args.grad_clip, amp=args.amp, device=args.device, seed=args.seed,
                       num_workers=args.workers, save_every_steps=args.save_every_steps, stage=stage)


def pretrained_from_args(value: str):
    if value == "default":
        return True
    if value == "random":
        return False
    from ..errors import InputError

    if not Path(value).expanduser().is_file():
        raise InputError(f"--pretrained: {value} is not a file (use 'default', 'random' or a weights file)")
    return str(Path(value).expanduser().resolve())


def parse_json_arg(text, what: str):
    if not text:
        return None
    from ..errors import InputError

    try:
        value = json.loads(text)
    except ValueError as e:
        raise InputError(f"{what} must be JSON: {e}") from e
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object")
    return value


def parse_options(items) -> dict:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, true/false), else strings."""
    from ..errors import InputError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--option expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..methods import available_methods

    parser.add_argument("--method", required=True, choices=available_methods())
    parser.add_argument("--data", required=True, help="dataset directory (ImageFolder layout or a demo task)")
    parser.add_argument("--out", required=True, help="output directory (checkpoint, config, training state)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="method option, e.g. --option rank=8 --option target=qv (repeatable)")
    parser.add_argument("--pretuned", default=None, help="TOAST stage-1 checkpoint to initialise toast/toast-lite")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held out of train when there is no val/")
    parser.add_argument("--no-hflip", action="store_true", help="no horizontal-flip augmentation")
    add_common_training_arguments(parser)


def run(args) -> int:
    import torch

    from ..io.checkpoints import build_without_init
    from ..models import data_config
    from ..training.trainer import train

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = train_config_from_args(args)
    from ..data.folder import folder_classes

    root = Path(args.data).expanduser()
    if (root / "manifest.json").is_file():
        from ..data.demo_task import load_manifest

        classes = list(load_manifest(root)["class_names"])
    else:
        classes = folder_classes(root)
    torch.manual_seed(args.seed)
    model = build_without_init(args.method, backbone=args.backbone, num_classes=len(classes),
                        pretrained=pretrained_from_args(args.pretrained), img_size=args.image_size,
                        backbone_kwargs=parse_json_arg(args.backbone_kwargs, "--backbone-kwargs"),
                        **parse_options(args.option))
    dc = data_config(model)
    mean, std = tuple(dc["mean"]), tuple(dc["std"])
    tr, va, te, classes = load_datasets(args.data, args.image_size, mean, std, not args.no_hflip,
                                        args.val_fraction, args.seed)
    meta = {"classes": classes,
            "data": {"dataset": str(root.resolve()), "image_size": args.image_size, "mean": list(mean),
                     "std": list(std), "n_train": len(tr), "n_val": len(va) if va else 0,
                     "n_test": len(te) if te else 0, "manifest_sha256": getattr(tr, "manifest_sha256", None),
                     "resize": "whole image, bilinear"}}
    if args.pretuned:
        from ..training.pretune import init_from_pretuned

        meta["pretuned_from"] = init_from_pretuned(model, args.pretuned)
    result = train(model, tr, va, cfg, args.out, test_data=te, meta=meta, resume=args.resume,
                   progress=not args.quiet)
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
        summary = {"val_acc": result.val.get("accuracy"), "test_acc": result.test.get("accuracy"),
                   "seconds": round(result.seconds, 1), "trainable_share": model.parameter_counts()["share"]}
        print(json.dumps(summary))
    return 0
