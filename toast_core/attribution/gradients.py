"""What every attribution kind shares: a recorder that keeps what its gradients need, the target score,
and the token layout.

The recorder (:class:`AttributionRecorder`) is an :class:`~toast_core.recording.AttentionRecorder`, so it
runs through :func:`~toast_core.recording.extract_attention` like any recording: per call, in
thread-local state, nothing installed on the model. Through the attention layer's hooks it can

* keep each block's attention **output** A·V (B, H, N, D) on the graph (made a leaf that requires grad
  where nothing upstream needs a gradient, e.g. the first block of a frozen backbone), with the block's
  q, k, v. Since O = A·V per head, ∂y/∂A = (∂y/∂O)·Vᵀ and A = softmax(q·kᵀ·scale) is recomputed from q
  and k, so gradients w.r.t. attention come out while the forward pass stays fused (SDPA);
* keep each block's attention **input** (its norm1 output, (B, N, C)) on the graph the same way (Grad-CAM);
* keep each block's **output tokens** with their graph (LeGrad's per-layer scores).

This happens only where gradients are on: TOAST runs its bottom-up pass under ``no_grad`` unless the
images need a gradient, so kinds that backpropagate to attention explain its top-down pass given the
bottom-up one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..recording import AttentionRecorder, AttentionResult, extract_attention

Target = Union[None, int, Sequence[int], torch.Tensor]


@dataclass
class AttentionCall:
    """One attention layer's call: q, k, v (B, H, N, D), detached, and its output leaf ``out``."""

    module: torch.nn.Module
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor

    def weights(self) -> torch.Tensor:
        """The post-softmax attention A = softmax(q·kᵀ·scale), (B, H, N, N) in float32."""
        return ((self.q.float() * self.module.scale) @ self.k.float().transpose(-2, -1)).softmax(dim=-1)

    def weight_grad(self, out_grad: torch.Tensor) -> torch.Tensor:
        """∂y/∂A = (∂y/∂O)·Vᵀ per head, from the gradient w.r.t. the output, (B, H, N, N)."""
        return out_grad.float() @ self.v.float().transpose(-2, -1)


def _differentiable(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is already on the graph; otherwise (nothing upstream needs a gradient, e.g.
    the first block of a frozen backbone) a leaf that requires grad: nothing upstream is cut either way."""
    return t if t.requires_grad else t.detach().requires_grad_(True)


class AttributionRecorder(AttentionRecorder):
    """A recorder that also keeps what gradient-based maps need (see the module docstring).

    Args:
        outputs: keep each attention call's q, k, v and its output as a leaf (``calls``).
        inputs: keep each attention layer's input as a leaf (``inputs``).
        tokens: keep each block's output tokens with their graph (``block_tokens``).
    """

    def __init__(self, outputs: bool = False, inputs: bool = False, tokens: bool = False):
        super().__init__(full=False, keep_grad=True, token_norm=True)
        self.want_outputs, self.want_inputs, self.want_tokens = outputs, inputs, tokens
        self.calls: dict[int, list[AttentionCall]] = {}
        self.inputs: dict[int, list[torch.Tensor]] = {}
        self.block_tokens: dict[int, list[torch.Tensor]] = {}

    def _index(self) -> int:
        self._current()
        return len(self.passes) - 1

    def attention_input(self, module, x):
        if not (self.want_inputs and torch.is_grad_enabled()):
            return x
        x = _differentiable(x)
        self.inputs.setdefault(self._index(), []).append(x)
        return x

    def attention_output(self, module, q, k, v, out):
        if not (self.want_outputs and torch.is_grad_enabled()):
            return out
        out = _differentiable(out)
        self.calls.setdefault(self._index(), []).append(AttentionCall(module, q.detach(), k.detach(), v.detach(), out))
        return out

    def add_tokens(self, x):
        super().add_tokens(x)
        if self.want_tokens and torch.is_grad_enabled():
            self.block_tokens.setdefault(self._index(), []).append(x)

    @property
    def final_index(self) -> int:
        return len(self.passes) - 1

    def layout(self, index: Optional[int] = None) -> tuple[tuple[int, int], int, int]:
        """(grid, num_prefix, num_prompts) of a pass (default: the final one)."""
        return self.passes[self.final_index if index is None else index].layout


@dataclass
class Attribution:
    """One attribution map kind computed on a batch.

    Attributes:
        kind: ``gae``, ``legrad``, ``gradcam`` or ``attnlrp``.
        maps: (B, h, w) float32 on the patch grid (signed for ``attnlrp``, ≥ 0 otherwise).
        target: (B,) the class each map explains.
        logits: (B, classes) of the forward pass the map came from (detached).
        result: the attention recorded in the same forward pass (detached).
        explains: which part of a multi-pass model the map explains (:func:`scope`; "" for one pass).
        extras: kind-specific diagnostics (e.g. AttnLRP's total relevance per image).
    """

    kind: str
    maps: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor
    result: AttentionResult
    explains: str
    extras: dict = field(default_factory=dict)


def check_model(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Clear errors for what gradients cannot work with."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise InputError(f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if torch.is_inference_mode_enabled():
        raise InputError("attribution maps need gradients: call them outside torch.inference_mode()")
    if model.training:
        raise InputError("attribution maps are defined for the model in eval mode (dropout off): call "
                         "model.eval() first (the model is not switched here, it may be shared)")


def run_forward(model: torch.nn.Module, images: torch.Tensor, recorder: AttributionRecorder,
                forward_kwargs: Optional[dict] = None, input_grad: bool = False):
    """One recorded forward pass with gradients on. Returns (images used, result with graph)."""
    check_model(model, images)
    if input_grad:
        images = images.detach().clone().requires_grad_(True)
    result = extract_attention(model, images, forward_kwargs=forward_kwargs, recorder=recorder)
    return images, result


def resolve_target(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """(B,) class indices: the prediction (None), one class for all (int) or one per image."""
    B, classes = logits.shape
    if target is None:
        return logits.detach().argmax(dim=-1)
    t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(B)
    if t.numel() != B:
        raise InputError(f"target has {t.numel()} entries for a batch of {B} images")
    if int(t.min()) < 0 or int(t.max()) >= classes:
        raise InputError(f"target class out of range: the model has {classes} classes")
    return t.clone()


def target_score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ_b logits[b, target[b]]: one backward pass gives every image its own gradient."""
    return logits.gather(1, target.view(-1, 1)).sum()


def to_grid(per_token: torch.Tensor, layout: tuple) -> torch.Tensor:
    """(B, N) values over all tokens → (B, h, w) over the patches (prefix and prompt tokens dropped)."""
    (h, w), n_prefix, n_prompts = layout
    return per_token[:, n_prefix + n_prompts:].reshape(per_token.shape[0], h, w)


def drop_prompts(tokens: torch.Tensor, n_prefix: int, n_prompts: int) -> torch.Tensor:
    """Remove VPT prompt tokens from (B, N, C) tokens, as the model does before its final norm."""
    if not n_prompts:
        return tokens
    return torch.cat([tokens[:, :n_prefix], tokens[:, n_prefix + n_prompts:]], dim=1)


def pixels_to_patches(pixel_map: torch.Tensor, grid: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """Sum a (B, H, W) pixel map over each patch of the grid → (B, h, w).

    Pixels the patch embedding never saw (right/bottom remainder) are dropped; a grid padded beyond the
    image (timm's ``dynamic_img_pad``) gets zeros for the missing pixels.
    """
    (h, w), (ph, pw) = grid, patch
    H, W = h * ph, w * pw
    m = pixel_map[:, :H, :W]
    m = F.pad(m, (0, W - m.shape[-1], 0, H - m.shape[-2]))
    return m.reshape(m.shape[0], h, ph, w, pw).sum(dim=(2, 4))


def detached(result: AttentionResult) -> AttentionResult:
    """A copy of ``result`` without autograd history (what callers keep)."""
    def d(v):
        if isinstance(v, torch.Tensor):
            return v.detach()
        if isinstance(v, dict):
            return {k: d(x) for k, x in v.items()}
        return v
    return dataclasses.replace(result, **{f.name: d(getattr(result, f.name)) for f in dataclasses.fields(result)})


def scope(kind: str, passes: tuple[str, ...]) -> str:
    """What a kind's map explains for a model with these passes ("" for a single-pass model).

    Kinds that backpropagate to attention or tokens explain the final pass given the earlier one (TOAST's
    bottom-up pass runs without gradients); AttnLRP backpropagates to the pixels through everything.
    """
    if len(passes) < 2:
        return ""
    if kind == "attnlrp":
        return "both passes + feedback path"
    return f"{passes[-1]} pass given {passes[0]} pass"
