"""LeGrad (Bousselham, Boggust, Chaybouti, Strobelt & Kuehne, 2024), ``legrad``.

For every block l of the pass the prediction comes from, the block's output tokens z_l are scored as
if they were the last ones, s_l = head(norm(z_l))[target] (the model's own final norm, pooling and
head), and the gradient of s_l w.r.t. that block's post-softmax attention A_l is taken. Its positive
part is averaged over heads and query tokens, giving one value per key token; the patch keys form the
layer's map, and the maps are averaged over the chosen layers (default: all).

Unlike GAE, the attention itself does not multiply the gradient. ∂s_l/∂A_l = (∂s_l/∂O_l)·V_lᵀ with O_l
the block's attention output, so the forward pass stays fused; each s_l is backpropagated only as far as
its own block's O_l (one block of backward each). For TOAST the scores are read from the top-down pass,
given the bottom-up pass.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import InputError
from .gradients import (Attribution, AttributionRecorder, Target, detached, drop_prompts, resolve_target,
                        run_forward, scope, target_score, to_grid)


def layer_scores(model: torch.nn.Module, tokens: torch.Tensor, n_prefix: int, n_prompts: int) -> torch.Tensor:
    """Class scores (B, classes) of one block's output tokens through the final norm and head."""
    vit = getattr(model, "vit", model)
    return vit.forward_head(vit.norm(drop_prompts(tokens, n_prefix, n_prompts)))


def legrad(model: torch.nn.Module, images: torch.Tensor, target: Target = None,
           forward_kwargs: Optional[dict] = None, last_layers: Optional[int] = None) -> Attribution:
    """LeGrad of ``target`` (default: the prediction).

    Args:
        last_layers: average over this many last blocks (None: all blocks).
        Others as :func:`toast_core.attribution.gae.gae`.

    Returns:
        :class:`~toast_core.attribution.gradients.Attribution`, maps (B, h, w) ≥ 0, not rescaled;
        ``extras["per_layer"]`` holds each averaged layer's own map (layers, B, h, w), from block
        ``extras["first_layer"]`` (0-based) up (for a per-layer view).
    """
    rec = AttributionRecorder(outputs=True, tokens=True)
    _, result = run_forward(model, images, rec, forward_kwargs)
    target = resolve_target(target, result.logits)
    calls, tokens = rec.calls[rec.final_index], rec.block_tokens[rec.final_index]
    n_layers = len(calls)
    first = 0 if last_layers is None else n_layers - int(last_layers)
    if not 0 <= first < n_layers:
        raise InputError(f"last_layers must be 1..{n_layers}, got {last_layers}")
    layout = rec.layout()
    _, n_prefix, n_prompts = layout
    per_layer = []
    for layer in range(first, n_layers):
        score = target_score(layer_scores(model, tokens[layer], n_prefix, n_prompts), target)
        (g,) = torch.autograd.grad(score, [calls[layer].out], retain_graph=layer < n_layers - 1)
        with torch.no_grad():
            per_key = calls[layer].weight_grad(g).clamp_min(0).mean(dim=(1, 2))  # (B, N) over keys
        per_layer.append(to_grid(per_key, layout))
    stacked = torch.stack(per_layer)  # (layers, B, h, w)
    return Attribution("legrad", stacked.mean(dim=0), target, result.logits.detach(), detached(result),
                       scope("legrad", result.passes), {"per_layer": stacked, "first_layer": first})
