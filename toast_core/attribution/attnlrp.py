"""AttnLRP (Achtibat et al., ICML 2024): layer-wise relevance propagation through attention, ``attnlrp``.

Written from the paper's rules for timm's ViT blocks, as gradient × input with the rules built into the
backward pass (values unchanged, only gradients altered):

* **linear layers, convolution, residual sums, LayerScale**: plain gradient × input (LRP-0 / ε → 0);
* **LayerNorm**: the standard deviation is a constant (detached), the centring stays linear
  (the paper's identity rule on the normalisation);
* **GELU / SiLU** (element-wise): identity rule, y = x · sg(f(x)/x), so relevance passes through unchanged;
* **attention** (rule ``"attnlrp"``): the two matrix products q·kᵀ and A·V get the uniform rule (each
  factor receives half of the product's relevance: q and k gradients × 1/4 in total, v × 1/2) and the
  softmax gets gradient × input, R_i = x_i (R_i − s_i Σ_j R_j). Rule ``"cp"`` (CP-LRP, Ali et al. 2022)
  treats the attention weights as constants instead: q and k are detached and all relevance goes to v.

The rules are active per call: the attention changes go through the recorder's hooks
(:class:`LRPRecorder`), LayerNorm and activations through a thread-local ``TorchFunctionMode``. No class
or model is patched. The relevance is gradient × input at the pixels, summed over channels and over the
pixels of each patch: a signed map whose total equals the target logit minus what biases (linear and
norm biases, position embedding, class/register tokens, VPT prompts) and the softmax absorb
(``extras["absorbed"]`` with ``track_softmax=True``). For TOAST the gradients run through both passes,
the token selection and the feedback path: the map explains the whole prediction.

LRP is patented (Fraunhofer); see docs/ATTRIBUTION.md. This module implements the published rules itself
and uses no LRP library.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import InputError
from .gradients import (Attribution, AttributionRecorder, Target, detached, pixels_to_patches, resolve_target,
                        run_forward, scope, target_score)

RULES = ("attnlrp", "cp")
_ELEMENTWISE = (F.gelu, F.silu)


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The value of ``x`` with its gradient multiplied by ``factor``."""
    return x * factor + (x * (1.0 - factor)).detach()


def layer_norm_rule(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """F.layer_norm with the standard deviation detached (the centring keeps its gradient)."""
    dims = tuple(range(-len(normalized_shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    std = (centred.pow(2).mean(dim=dims, keepdim=True) + eps).sqrt().detach()
    y = centred / std
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def identity_rule(func, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """f(x) as x · sg(f(x)/x): gradient × input hands the output's relevance to the input unchanged."""
    y = func(x, *args, **kwargs)
    small = x.abs() <= 1e-6
    ratio = torch.where(small, torch.full_like(x, 0.5), y / torch.where(small, torch.ones_like(x), x))
    return x * ratio.detach()  # f(x)/x → f'(0) = 1/2 at 0 for GELU and SiLU


class LRPRules(TorchFunctionMode):
    """LayerNorm and element-wise activation rules for the calls made in this thread while active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.layer_norm:
            return layer_norm_rule(*args, **kwargs)
        if func in _ELEMENTWISE:
            return identity_rule(func, *args, **kwargs)
        return func(*args, **kwargs)


class LRPRecorder(AttributionRecorder):
    """Applies the attention rule through the attention layer's hooks; optionally keeps the explicit
    attention of each call to account for the relevance the softmax absorbs."""

    def __init__(self, rule: str = "attnlrp", track_softmax: bool = False):
        super().__init__()
        self.rule, self.track_softmax = rule, track_softmax
        self.softmax_terms: list[tuple[torch.Tensor, torch.Tensor]] = []  # (scaled logits, weights)

    def attention_qkv(self, module, q, k, v):
        if self.rule == "cp":
            return q.detach(), k.detach(), v
        return scale_grad(q, 0.25), scale_grad(k, 0.25), scale_grad(v, 0.5)

    def attention_output(self, module, q, k, v, out):
        if not (self.track_softmax and self.rule == "attnlrp" and torch.is_grad_enabled()):
            return out
        logits = (q * module.scale) @ k.transpose(-2, -1)  # (B, H, N, N), same graph as SDPA's
        weights = logits.softmax(dim=-1)
        self.softmax_terms.append((logits, weights))
        return weights @ v


def _check_mlps(model: torch.nn.Module) -> None:
    from timm.layers import Mlp

    vit = getattr(model, "vit", model)
    odd = sorted({type(b.mlp).__name__ for b in vit.blocks if type(b.mlp) is not Mlp})
    if odd:
        raise InputError(f"AttnLRP rules are written for timm's Mlp (fc-act-fc); this model uses {odd}")


def attnlrp(model: torch.nn.Module, images: torch.Tensor, target: Target = None,
            forward_kwargs: Optional[dict] = None, rule: str = "attnlrp",
            track_softmax: bool = False) -> Attribution:
    """AttnLRP relevance of ``target`` (default: the prediction), summed per patch.

    Args:
        rule: ``"attnlrp"`` (the paper's softmax and uniform matmul rules) or ``"cp"`` (CP-LRP).
        track_softmax: also return the relevance each image loses in the softmax rules
            (``extras["absorbed"]``, (B,)); costs the explicit attention matrices.
        Others as :func:`toast_core.attribution.gae.gae`.

    Returns:
        :class:`~toast_core.attribution.gradients.Attribution`: signed maps (B, h, w); ``extras`` holds
        ``total`` (B,), the relevance at the pixels, and ``logit`` (B,), the explained logit.
    """
    if rule not in RULES:
        raise InputError(f"unknown AttnLRP rule {rule!r}; choose from {RULES}")
    _check_mlps(model)
    rec = LRPRecorder(rule, track_softmax)
    with LRPRules():
        x, result = run_forward(model, images, rec, forward_kwargs, input_grad=True)
    target = resolve_target(target, result.logits)
    score = target_score(result.logits, target)
    terms = [t for pair in rec.softmax_terms for t in pair]
    grads = torch.autograd.grad(score, [x, *terms])
    with torch.no_grad():
        pixel = (x * grads[0]).sum(dim=1)  # (B, H, W)
        vit = getattr(model, "vit", model)
        maps = pixels_to_patches(pixel.float(), result.grid, tuple(vit.patch_embed.patch_size))
        extras = {"total": pixel.flatten(1).sum(1),
                  "logit": result.logits.detach().gather(1, target.view(-1, 1)).squeeze(1)}
        if track_softmax:
            extras["absorbed"] = _absorbed(terms, grads[1:], x.shape[0])
    return Attribution("attnlrp", maps, target, result.logits.detach(), detached(result),
                       scope("attnlrp", result.passes), extras)


def _absorbed(terms: list, grads: tuple, batch: int) -> torch.Tensor:
    """Per image, Σ over softmax calls of ½(Σ A⊙∂A − Σ x⊙∂x): relevance entering a softmax minus
    relevance leaving it (the ½ is the uniform rule's share of A·V that goes to A)."""
    lost = []
    for i in range(0, len(terms), 2):
        (logits, weights), (g_x, g_a) = terms[i:i + 2], grads[i:i + 2]
        r_in = (weights * g_a).flatten(1).sum(1)
        r_out = (logits * g_x).flatten(1).sum(1)
        lost.append(0.5 * (r_in - r_out))
    return torch.stack(lost).sum(0) if lost else torch.zeros(batch)
