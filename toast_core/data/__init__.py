"""Datasets: the generated default task (``demo_task``) and a torch reader for its layout.

``MaskedImageDataset`` and ``PairedAugment`` import torch, so they load on first access: generating
the task needs only numpy and Pillow.
"""
from .demo_task import (
    DemoTaskConfig,
    default_demo_task_dir,
    ensure_demo_task,
    generate_demo_task,
    is_valid_demo_task,
    load_manifest,
)
from .demo_samples import task_statistics, write_demo_samples
from .shapes import SHAPE_NAMES

__all__ = [
    "DemoTaskConfig",
    "MaskedImageDataset",
    "PairedAugment",
    "SHAPE_NAMES",
    "default_demo_task_dir",
    "ensure_demo_task",
    "generate_demo_task",
    "is_valid_demo_task",
    "load_manifest",
    "task_statistics",
    "write_demo_samples",
]


def __getattr__(name: str):
    if name in ("MaskedImageDataset", "PairedAugment"):
        from . import masked_dataset

        return getattr(masked_dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
