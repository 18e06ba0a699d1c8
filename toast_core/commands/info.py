"""``info``: the registered methods and what each trains, on a chosen backbone."""
from __future__ import annotations

import argparse

from ..backbones import DEFAULT_BACKBONE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="timm model name")
    parser.add_argument("--num-classes", type=int, default=10)


def run(args) -> int:
    from .. import available_methods, build_model

    print(f"backbone {args.backbone}, {args.num_classes} classes (random weights for counting)")
    print(f"{'method':<12} {'trainable':>12} {'total':>12} {'share':>8}")
    for name in available_methods():
        m = build_model(name, backbone=args.backbone, num_classes=args.num_classes, pretrained=False)
        c = m.parameter_counts()
        print(f"{name:<12} {c['trainable']:>12,} {c['total']:>12,} {100 * c['share']:>7.2f}%")
    return 0
