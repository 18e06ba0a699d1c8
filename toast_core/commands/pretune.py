"""``pretune``: TOAST stage 1 — fit the top-down module to the frozen backbone on generic photo crops.

By default stage 1 is solved exactly: the reconstruction loss is least squares, so A_l, P and B_l are
ridge fits (:mod:`toast_core.training.stage1`), with per-block diagnostics on held-out crops. ``--gradient``
runs the older gradient pre-tuning (task loss + reconstruction loss) instead. Use the result with
``train --method toast --pretuned OUT``."""
from __future__ import annotations

import argparse
import json

from .train import add_common_training_arguments, parse_json_arg, pretrained_from_args, train_config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory of the stage-1 checkpoint")
    parser.add_argument("--images", type=int, default=1050, help="generic crops to fit on (21 photographs)")
    parser.add_argument("--val-images", type=int, default=210, help="held-out generic crops for the diagnostics")
    parser.add_argument("--td-gain", type=float, default=2.0,
                        help="B_l maps the chained state to td-gain x (norm1(x_l) - beta): the top-down term's scale")
    parser.add_argument("--ridge", type=float, default=1e-3, help="ridge lambda relative to the Gram diagonal")
    parser.add_argument("--xi-init", choices=("pc1", "cls-minus-patch"), default="pc1",
                        help="xi's start: the patch tokens' first principal component (orthogonal to their "
                             "mean), or mean CLS - mean patch")
    parser.add_argument("--gradient", action="store_true",
                        help="gradient pre-tuning (task + reconstruction loss) instead of the least-squares fit")
    parser.add_argument("--recon-weight", type=float, default=0.1, help="λ of the reconstruction loss (--gradient)")
    add_common_training_arguments(parser, epochs=2, lr=1e-3)


def run(args) -> int:
    import torch

    from ..training.pretune import PretuneData, Stage1Config, pretune, pretune_least_squares

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.gradient:
        from ..training.stage1 import diagnostics_markdown

        cfg = Stage1Config(n_fit=args.images, n_held_out=args.val_images, image_size=args.image_size,
                           td_gain=args.td_gain, ridge=args.ridge, xi_init=args.xi_init,
                           seed=args.seed)
        info = pretune_least_squares(args.out, config=cfg, pretrained=pretrained_from_args(args.pretrained),
                                     backbone=args.backbone,
                                     backbone_kwargs=parse_json_arg(args.backbone_kwargs, "--backbone-kwargs"),
                                     progress=None if args.quiet else (lambda f, t: print(f"[{100 * f:3.0f}%] {t}",
                                                                                            flush=True)))
        print(diagnostics_markdown(info["stage1"]["diagnostics"]))
        print(f"checkpoint: {info['path']} ({info['stage1']['seconds']:.0f} s)")
        return 0
    result = pretune(args.out, backbone=args.backbone, pretrained=pretrained_from_args(args.pretrained),
                     img_size=args.image_size, backbone_kwargs=parse_json_arg(args.backbone_kwargs, "--backbone-kwargs"),
                     data=PretuneData(args.images, args.val_images, args.image_size, args.seed),
                     train_config=train_config_from_args(args, stage="pretune"), resume=args.resume,
                     progress=not args.quiet, toast_config={"recon_weight": args.recon_weight})
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
        print(json.dumps({"val_acc": result.val.get("accuracy"), "seconds": round(result.seconds, 1)}))
    return 0
