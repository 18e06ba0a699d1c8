"""Demo plans and recipes: how each method is trained for the default checkpoints, per device budget."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..data.demo_task import DemoTaskConfig
from ..errors import ToastError
from ..training.pretune import Stage1Config

DEMO_VERSION = "1"


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
        MethodRecipe("linear", lr=1e-1, epochs=epochs, warmup_epochs=1.0),  # 9e-3 at 112 px; 1e-1 won at 224 px
        MethodRecipe("finetune", lr=5e-5, epochs=epochs, weight_decay=0.05, head_lr_scale=20.0),
        MethodRecipe("lora", lr=1.5e-3, epochs=epochs),  # 5e-3 at 112 px; 1.5e-3 won at 224 px over three seeds
        MethodRecipe("vpt-shallow", lr=3e-3, epochs=epochs, head_lr_scale=3.0),
        MethodRecipe("vpt-deep", lr=5e-3, epochs=epochs),
        # TOAST: 3e-2 (at 224 px 1e-1 led seed 0 by one validation image; over three seeds 3e-2 leads by 3.2
        # points on validation: docs/RESULTS_TRAINING.md)
        MethodRecipe("toast", lr=3e-2, epochs=epochs, weight_decay=0.01, pretuned=True, lr_scales=toast_groups,
                     relative_lr=("decoders.*.linear2.*",)),
        MethodRecipe("toast-lite", lr=3e-2, epochs=epochs, weight_decay=0.01, pretuned=True, lr_scales=lite_groups,
                     relative_lr=("top_down_transform",)),
    )


PLAN_NAMES = ("cpu", "gpu", "quick", "ship")


SHIPPED_METHODS = ("linear", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite")


#: input side of every plan users run: 224 px = 16x16 patches of DINOv2-S/14 (the 112-px checkpoints of
#: earlier releases gave 8x8 maps)
DEFAULT_IMAGE_SIZE = 224

#: epochs of every shipped recipe (the CPU plan's fine-tuning, trained at install, gets 3)
SHIP_EPOCHS = 8


def plan_for(device: str | torch.device = "cpu", quick: bool = False, name: Optional[str] = None) -> DemoPlan:
    """The demo plan for a device: ``quick`` (tests, ~a minute on CPU), ``gpu`` or ``cpu``; or by ``name``.

    Every plan users run works at 224 px (16x16 patches of DINOv2's 14 px). The CPU plan installs the six
    parameter-efficient checkpoints shipped in ``assets/checkpoints`` (trained by the ``ship`` plan: same
    input and data, 8 epochs; a few MB in all, where full fine-tuning's 86 MB cannot ship) and trains full
    fine-tuning (1000 images, 3 epochs) in the background. The GPU plan trains all seven on one GPU (1000
    images, 8 epochs). ``quick`` (56 px, 24 images) is for tests. See docs/RESULTS_TRAINING.md.
    """
    if name is not None and name not in PLAN_NAMES:
        raise ToastError(f"unknown demo plan {name!r}; choose one of {', '.join(PLAN_NAMES)}")
    dev = torch.device(device)
    if name is None:
        name = "quick" if quick else "gpu" if dev.type == "cuda" else "cpu"
    if name == "quick":
        return DemoPlan("quick", image_size=56, task=DemoTaskConfig.quick(), n_train=24, batch_size=12,
                        stage1=Stage1Config(n_fit=42, n_held_out=21), recipes=_recipes(1))
    if name == "gpu":
        return DemoPlan("gpu", image_size=DEFAULT_IMAGE_SIZE, task=DemoTaskConfig(), n_train=1000, batch_size=32,
                        stage1=Stage1Config(), recipes=_recipes(SHIP_EPOCHS))
    if name == "ship":
        return DemoPlan("ship", image_size=DEFAULT_IMAGE_SIZE, task=DemoTaskConfig(), n_train=1000, batch_size=32,
                        stage1=Stage1Config(),
                        recipes=tuple(r for r in _recipes(SHIP_EPOCHS) if r.method in SHIPPED_METHODS))
    ft = dataclasses.replace(_recipes(3)[1], lr=1e-4)
    return DemoPlan("cpu", image_size=DEFAULT_IMAGE_SIZE, task=DemoTaskConfig(), n_train=1000, batch_size=32,
                    stage1=Stage1Config(),
                    recipes=tuple(r for r in _recipes(SHIP_EPOCHS) if r.method in SHIPPED_METHODS) + (ft,),
                    shipped=SHIPPED_METHODS)
