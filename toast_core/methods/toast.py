"""TOAST: transfer learning via top-down attention steering (Shi et al., 2023), and TOAST-Lite.

Inference, for a ViT with L blocks and width C:

1. bottom-up pass through the frozen backbone → output tokens X (B, N, C) after the final norm;
2. token selection s_i = clamp(cos(x_i, ξ), 0, 1), x̃_i = s_i·x_i; channel selection z = x̃·P with
   tokens as rows (the authors' convention: z_i = Pᵀ x̃_i per token, so their P imports unchanged);
3. feedback path from the top block down: h_L = z, h_l = A_l h_{l+1}, td_l = B_l h_l;
4. top-down pass through the same blocks with V ← V + W_v td_l in block l; classify from it.

Steps 2–4 are linear in the gated tokens x̃, so for large batches the path is folded into one C×C
matrix per block, W_v B_l A_l ⋯ A_{L-1} Pᵀ (:func:`feedback_operators`, :func:`fold_pays`).

TOAST trains A_l, B_l, ξ and the head (P frozen); TOAST-Lite trains rank-4 LoRA updates on every
A_l and B_l, ξ, P and the head. Parameter names follow the authors' checkpoint layout
(``decoders.{l}.linear`` = A_l, ``decoders.{l}.linear2`` = B_l, ``prompt`` = ξ,
``top_down_transform`` = P) so their checkpoints import by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import current_recorder
from ..recording import recorder_begin_pass
from .base import MethodConfig, TransferModel, register
from .lora import LoRALinear

BOTTOM_UP, TOP_DOWN = "bottom-up", "top-down"


@dataclass
class TOASTConfig(MethodConfig):
    """Options of TOAST / TOAST-Lite.

    Attributes:
        official: reproduce the authors' quirks (value bias added a second time) so their
            checkpoints behave as trained. Off by default: V ← V + W_v td exactly.
        head_bias_prior: initialise the head bias at −log(classes − 1), as the authors do.
        recon_weight: λ of the reconstruction loss used in pre-tuning (0.1 for vision).
        lite_rank, lite_alpha: LoRA rank and alpha on the decoders (TOAST-Lite only).
    """

    official: bool = False
    head_bias_prior: bool = True
    recon_weight: float = 0.1
    lite_rank: int = 4
    lite_alpha: float = 1.0

    def __post_init__(self):
        if self.recon_weight < 0:
            raise ValueError(f"recon_weight must be >= 0, got {self.recon_weight}")
        if self.lite_rank < 1:
            raise ValueError(f"lite_rank must be >= 1, got {self.lite_rank}")


class Decoder(nn.Module):
    """One block's feedback: ``linear`` = A_l (carries the signal down), ``linear2`` = B_l (its output)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        self.linear2 = nn.Linear(dim, dim, bias=False)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.trunc_normal_(self.linear2.weight, std=0.02)


def select_tokens(tokens: torch.Tensor, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token selection. tokens (B, N, C), xi (C,) → gated tokens (B, N, C) and gate s (B, N) in [0, 1]."""
    s = F.cosine_similarity(tokens, xi.to(tokens.dtype).view(1, 1, -1), dim=-1).clamp(0, 1)
    return tokens * s.unsqueeze(-1), s


def feedback_states(z: torch.Tensor, decoders: nn.ModuleList) -> list[torch.Tensor]:
    """The feedback path's states h_l = A_l A_{l+1} … A_{L-1} z for every block l (list, block order)."""
    hs = [None] * len(decoders)
    h = z
    for l in range(len(decoders) - 1, -1, -1):
        h = hs[l] = decoders[l].linear(h)
    return hs


def feedback_operators(decoders: nn.ModuleList, transform: torch.Tensor, scale: float = 1.0) -> list[torch.Tensor]:
    """F_l = scale·B_l A_l A_{l+1} … A_{L-1} Pᵀ for every block l: td_l = F_l x̃ as one C×C matrix each.

    ``transform`` is P in the authors' convention (z = x̃·P with tokens as rows, i.e. z_i = Pᵀ x̃_i).

    The whole feedback path is linear (no biases, LoRA updates included), so the top-down signal of
    block l is one matrix applied to the gated tokens. Forming the L matrices costs 4·L·C³ FLOPs.
    """
    ops = [None] * len(decoders)
    chain = transform.t() * scale if scale != 1.0 else transform.t()
    for l in range(len(decoders) - 1, -1, -1):
        chain = decoders[l].linear.weight @ chain
        ops[l] = decoders[l].linear2.weight @ chain
    return ops


def fold_pays(batch: int, tokens: int, dim: int) -> bool:
    """Whether the folded top-down path is cheaper than the per-token one.

    Per block, per-token: A_l, B_l and W_v on every token, 6·B·N·C² FLOPs. Folded: three C×C products
    (6·C³) and one projection of the gated tokens (2·B·N·C²). Folding saves work when B·N > 1.5·C; it
    is used from B·N > 2·C, where it also beats folding W_v·B_l alone (4·B·N·C² + 2·C³).
    """
    return batch * tokens > 2 * dim


def reconstruction_loss(block_io: list, decoders: nn.ModuleList, weight: float = 0.1) -> torch.Tensor:
    """Pre-tuning's loss making each A_l invert its block: λ·Σ_l MSE(A_l·sg(out_l), sg(in_l))."""
    total = sum(F.mse_loss(dec.linear(out.detach()), inp.detach()) for (inp, out), dec in zip(block_io, decoders))
    return weight * total


class _TOASTBase(TransferModel):
    Config = TOASTConfig
    lite: bool = False
    has_top_down = True
    plain_first_pass = True

    def setup(self) -> None:
        dim = self.vit.embed_dim
        self.prompt = nn.Parameter(torch.randn(dim))  # ξ
        self.top_down_transform = nn.Parameter(torch.eye(dim))  # P
        self.decoders = nn.ModuleList(Decoder(dim) for _ in self.vit.blocks)
        if self.lite:
            cfg = self.config
            for dec in self.decoders:
                dec.linear = LoRALinear(dec.linear, cfg.lite_rank, cfg.lite_alpha)
                dec.linear2 = LoRALinear(dec.linear2, cfg.lite_rank, cfg.lite_alpha)
        head = self.vit.head
        if self.config.head_bias_prior and isinstance(head, nn.Linear) and head.out_features > 1:
            nn.init.constant_(head.bias, -math.log(head.out_features - 1))

    def trainable_modules(self):
        if self.lite:
            loras = [p for dec in self.decoders for lin in (dec.linear, dec.linear2) for p in (lin.lora_A, lin.lora_B)]
            return [self.vit.head, self.prompt, self.top_down_transform, *loras]
        return [self.vit.head, self.prompt, self.decoders]

    def _gated(self, tokens: torch.Tensor, xi: Optional[torch.Tensor], grid: Optional[tuple]) -> torch.Tensor:
        """Step 2's token selection x̃; records the gate when a recorder is active."""
        gated, s = select_tokens(tokens, self.prompt if xi is None else xi)
        rec = current_recorder()
        if rec is not None and grid is not None:
            p = self.num_prefix_tokens
            rec.add_extra("gate", s[:, p:].reshape(s.shape[0], *grid))
        return gated

    def top_down(self, tokens: torch.Tensor, xi: Optional[torch.Tensor] = None,
                 grid: Optional[tuple] = None) -> list[torch.Tensor]:
        """Steps 2–3: the per-block top-down signals td_l = B_l h_l from the bottom-up output tokens."""
        z = self._gated(tokens, xi, grid) @ self.top_down_transform  # z = x̃·P (tokens as rows)
        td = [dec.linear2(h) for dec, h in zip(self.decoders, feedback_states(z, self.decoders))]
        rec = current_recorder()
        if rec is not None and grid is not None:
            rec.add_extra("td_norm", torch.stack([t.norm(dim=-1).mean(dim=-1) for t in td]))
        return td

    def folds(self, tokens: torch.Tensor) -> bool:
        """Whether :meth:`value_terms` folds the feedback path for these tokens: B·N > 2·C and nothing
        records td itself (recordings report |td_l|, which only the per-token path computes)."""
        return current_recorder() is None and fold_pays(*tokens.shape)

    def value_terms(self, tokens: torch.Tensor, xi: Optional[torch.Tensor] = None,
                    grid: Optional[tuple] = None, td_scale: float = 1.0) -> list[torch.Tensor]:
        """Step 4's value terms W_v·(td_scale·td_l), (B, H, N, D) per block.

        Folded (:meth:`folds`): (W_v F_l)·x̃ with F_l from :func:`feedback_operators`, one token-wise
        projection per block (:meth:`~toast_core.attention.SteerableAttention.folded_values`). Otherwise
        td_l = B_l h_l per token, projected by :meth:`~toast_core.attention.SteerableAttention.value_projection`.
        """
        official = self.config.official
        if self.folds(tokens):
            ops = feedback_operators(self.decoders, self.top_down_transform, td_scale)
            gated = self._gated(tokens, xi, grid)
            return [blk.attn.folded_values(gated, op, official) for blk, op in zip(self.vit.blocks, ops)]
        td = self.top_down(tokens, xi, grid)
        return [blk.attn.value_projection(t * td_scale if td_scale != 1.0 else t, official)
                for blk, t in zip(self.vit.blocks, td)]

    def bottom_up(self, images: torch.Tensor):
        """Step 1: the plain backbone pass (no gradient unless the images need one)."""
        recorder_begin_pass(BOTTOM_UP)
        if torch.is_grad_enabled() and images.requires_grad:
            return self.run_blocks(images)
        with torch.no_grad():
            return self.run_blocks(images)

    def forward(self, images: torch.Tensor, td_scale: float = 1.0,
                xi: Optional[torch.Tensor] = None, first_pass=None) -> torch.Tensor:
        """Logits of the top-down pass.

        Args:
            td_scale: multiplies the top-down signal (0 = bottom-up only, 1 = as trained, >1 amplified).
            xi: replaces the learned task embedding ξ (C,) for this call (e.g. a clicked patch's token).
            first_pass: ``images -> (tokens, grid)`` giving the bottom-up pass's output instead of running
                it (the same frozen pass shared between models, :mod:`toast_core.compare.shared_pass`).
        """
        return self._two_passes(images, td_scale, xi, collect_io=False, first_pass=first_pass)[0]

    def first_pass_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The bottom-up pass's output tokens (no gradient): what :class:`~toast_core.training.first_pass.FirstPassCache`
        memoises while training (the trainer passes it back as ``first_pass``)."""
        return self.bottom_up(images).tokens

    def _two_passes(self, images, td_scale=1.0, xi=None, collect_io=False, first_pass=None):
        if first_pass is None:
            first = self.bottom_up(images)
            tokens, grid = first.tokens, first.grid
        else:  # tokens (training's cache: nothing records, no grid needed) or (tokens, grid) (a shared pass)
            out = first_pass(images)
            tokens, grid = out if isinstance(out, tuple) else (out, None)
        values = self.value_terms(tokens, xi, grid, td_scale)
        recorder_begin_pass(TOP_DOWN)
        second = self.run_blocks(images, values=values, collect_io=collect_io)
        return self.classify(second.tokens), second

    def training_outputs(self, images: torch.Tensor, stage: str = "tune", first_pass=None):
        """Logits and extra losses; pre-tuning adds the reconstruction loss. ``first_pass``: a callable
        images → bottom-up tokens (e.g. a :class:`~toast_core.training.first_pass.FirstPassCache`)."""
        want_rec = stage == "pretune" and self.config.recon_weight > 0
        logits, second = self._two_passes(images, collect_io=want_rec, first_pass=first_pass)
        extra = {}
        if want_rec:
            extra["reconstruction"] = reconstruction_loss(second.block_io, self.decoders, self.config.recon_weight)
        return logits, extra

    def token_at(self, images: torch.Tensor, row: int, col: int) -> torch.Tensor:
        """The bottom-up output token of patch (row, col) of image 0 — a ξ for steering (C,)."""
        with torch.no_grad():
            out = self.run_blocks(images[:1])
        h, w = out.grid
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"patch ({row}, {col}) is outside the {h}x{w} grid")
        return out.tokens[0, self.num_prefix_tokens + row * w + col].clone()


@register("toast")
class TOAST(_TOASTBase):
    lite = False


@register("toast-lite")
class TOASTLite(_TOASTBase):
    lite = True
