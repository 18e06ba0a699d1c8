"""``pretune``: TOAST stage 1 — pre-tune the top-down module on generic photo crops (reconstruction
loss + task loss). Use the result with ``train --method toast --pretuned OUT``."""
from __future__ import annotations

import argparse
import json

from .train import add_common_training_arguments, parse_json_arg, pretrained_from_args, train_config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory of the stage-1 checkpoint")
    parser.add_argument("--images", type=int, default=2100, help="generic training crops (21 photographs)")
    parser.add_argument("--val-images", type=int, default=210)
    parser.add_argument("--recon-weight", type=float, default=0.1, help="λ of the reconstruction loss")
    add_common_training_arguments(parser, epochs=2, lr=1e-3)


def run(args) -> int:
    import torch

    from ..pretune import PretuneData, pretune

    if args.threads:
        torch.set_num_threads(args.threads)
    result = pretune(args.out, backbone=args.backbone, pretrained=pretrained_from_args(args.pretrained),
                     img_size=args.image_size, backbone_kwargs=parse_json_arg(args.backbone_kwargs, "--backbone-kwargs"),
                     data=PretuneData(args.images, args.val_images, args.image_size, args.seed),
                     train_config=train_config_from_args(args, stage="pretune"), resume=args.resume,
                     progress=not args.quiet, toast_config={"recon_weight": args.recon_weight})
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
        print(json.dumps({"val_acc": result.val.get("accuracy"), "seconds": round(result.seconds, 1)}))
    return 0
