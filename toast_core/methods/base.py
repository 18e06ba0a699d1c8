"""The interface every transfer method implements, and the registry that lists them.

A method is a :class:`TransferModel` subclass with a config dataclass, registered with
``@register("name")``. The base class owns the forward loop over the timm backbone's own modules
(patch embedding, blocks, norm, head), so every method runs the same attention layer and the same
recorder; a method overrides only what it changes:

* :meth:`TransferModel.setup` adds its modules (adapters, prompts, feedback path);
* :meth:`TransferModel.trainable_modules` says what trains (freezing is structural);
* :meth:`TransferModel.tokens_before_block` inserts or replaces prompt tokens (VPT);
* :meth:`TransferModel.forward` may run several passes (TOAST).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Optional

import torch
from torch import nn

from ..attention import current_recorder, steering

_REGISTRY: dict[str, type["TransferModel"]] = {}


def register(name: str) -> Callable[[type["TransferModel"]], type["TransferModel"]]:
    """Class decorator adding a method to the registry (duplicate names are an error)."""
    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"method '{name}' is already registered by {_REGISTRY[name].__name__}")
        cls.method_name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def get_method(name: str) -> type["TransferModel"]:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; available: {', '.join(available_methods())}") from None


#: the built-in methods' listing order, whichever module was imported first
_BUILT_IN_ORDER = ("linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite")


def available_methods() -> list[str]:
    """Registered method names: the built-in ones in a fixed order, then others in registration order."""
    _ensure_loaded()
    rank = {name: i for i, name in enumerate(_BUILT_IN_ORDER)}
    return sorted(_REGISTRY, key=lambda n: rank.get(n, len(rank)))


def _ensure_loaded() -> None:
    # Each module registers itself; the import order is the order methods are listed in.
    from . import linear  # noqa: F401
    from . import finetune  # noqa: F401
    from . import lora  # noqa: F401
    from . import vpt  # noqa: F401
    from . import toast  # noqa: F401


@dataclass
class MethodConfig:
    """Base of every method's config. Subclasses add documented fields and validate in __post_init__."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PassOutput:
    """What one pass through the blocks produced."""

    tokens: torch.Tensor  # (B, N, C) after the final norm, prompt tokens removed
    grid: tuple  # (h, w) patch grid
    block_io: Optional[list] = None  # [(input, output)] per block when asked for


class TransferModel(nn.Module):
    """A timm ViT adapted by one transfer method. ``forward(images)`` returns logits (B, classes)."""

    method_name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    backbone_frozen: ClassVar[bool] = True
    #: Capability: a bottom-up pass, then a top-down pass steered by it (TOAST). Such a model's
    #: ``forward`` accepts ``td_scale`` and ``xi``, and it offers ``first_pass_tokens`` and ``token_at``.
    has_top_down: ClassVar[bool] = False
    #: Capability: the first (or only) pass is the plain backbone, ``run_blocks(images)`` with nothing
    #: added, so models with the same backbone weights compute it alike and may share it
    #: (:mod:`toast_core.compare.shared_pass`). A method that changes the backbone's pass (prompts,
    #: adapters, trained weights) leaves it False.
    plain_first_pass: ClassVar[bool] = False

    def __init__(self, vit: nn.Module, config: Optional[MethodConfig] = None):
        super().__init__()
        self.vit = vit
        self.config = config if config is not None else self.Config()
        self.setup()
        self.requires_grad_(False)
        for module in self.trainable_modules():
            module.requires_grad_(True)

    # -- what a method overrides ------------------------------------------------------------------
    def setup(self) -> None:
        """Add the method's modules. Called once from __init__, before freezing."""

    def trainable_modules(self) -> Iterable[nn.Module | nn.Parameter]:
        """Modules/parameters that train. Default: the classifier head."""
        return [self.vit.head]

    @property
    def num_prompt_tokens(self) -> int:
        return 0

    def tokens_before_block(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Hook before block ``index`` (VPT inserts/replaces prompt tokens here)."""
        return x

    def training_outputs(self, images: torch.Tensor, stage: str = "tune") -> tuple[torch.Tensor, dict]:
        """Logits and method-specific losses (added to the task loss by the trainer).

        ``stage`` is ``"tune"`` (downstream task) or ``"pretune"`` (TOAST's stage 1).
        """
        return self(images), {}

    # -- shared machinery ---------------------------------------------------------------------------
    @property
    def num_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_frozen:
            self.vit.eval()  # a frozen backbone stays in eval mode (dropout, drop-path off)
        return self

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embedding + prefix tokens + position embedding. Returns tokens (B, N, C) and the grid."""
        vit = self.vit
        x = vit.patch_embed(images)
        if x.ndim == 4:  # dynamic image size: (B, h, w, C)
            grid = (x.shape[1], x.shape[2])
        else:
            grid = tuple(vit.patch_embed.grid_size)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        return x, grid

    def run_blocks(self, images: torch.Tensor, values: Optional[list] = None,
                   collect_io: bool = False) -> PassOutput:
        """One pass through the backbone; ``values[l]`` (B, H, N, D) is added to block l's attention
        values when given (see :func:`toast_core.attention.steering`)."""
        x, grid = self.embed(images)
        rec = current_recorder()
        if rec is not None:
            rec.set_layout(grid, self.num_prefix_tokens, self.num_prompt_tokens)
        mapping = {blk.attn: v for blk, v in zip(self.vit.blocks, values)} if values is not None else {}
        io = [] if collect_io else None
        with steering(mapping):
            for i, blk in enumerate(self.vit.blocks):
                x = self.tokens_before_block(x, i)
                x_in = x
                x = blk(x)
                if io is not None:
                    io.append((x_in, x))
                if rec is not None:
                    rec.add_tokens(x)
        n_prompts = self.num_prompt_tokens
        if n_prompts:
            p = self.num_prefix_tokens
            x = torch.cat([x[:, :p], x[:, p + n_prompts:]], dim=1)
        return PassOutput(self.vit.norm(x), grid, io)

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool the normed tokens and apply the head (timm's own pooling rules)."""
        return self.vit.forward_head(tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.run_blocks(images).tokens)

    def parameter_counts(self) -> dict:
        """Trainable and total parameter counts and the trainable share (0..1)."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"trainable": trainable, "total": total, "share": trainable / max(total, 1)}

    def describe(self) -> dict:
        return {"method": self.method_name, "config": self.config.to_dict(), **self.parameter_counts()}
