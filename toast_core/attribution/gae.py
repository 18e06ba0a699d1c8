"""Gradient-weighted attention rollout (Chefer, Gur & Wolf, ICCV 2021, "Generic attention-model
explainability"), ``gae``.

Per block l of the pass the prediction comes from, Ā_l = E_h[(∇A_l ⊙ A_l)⁺] (gradient of the target
logit w.r.t. the post-softmax attention, times the attention, positive part, head mean), and
R ← R + Ā_l·R from R = I, block by block. The map is the CLS row of R over the patch tokens (models
without a class token: the mean row of the patch tokens).

Only that row is needed, so it is carried as a row vector from the top block down,
r ← r + r·Ā_l (O(N²) per block instead of O(N³)); the result is the same. ∇A comes from ∂y/∂O·Vᵀ, so
the forward pass stays fused. VPT-deep needs no special case: it discards each block's prompt outputs
(fresh prompts enter the next block), so their rows of ∇A are zero and R keeps them as identity rows,
which is what fresh inputs are (a test checks this against the full-matrix rules).
"""
from __future__ import annotations

from typing import Optional

import torch

from .gradients import (Attribution, AttributionRecorder, Target, detached, resolve_target, run_forward, scope,
                        target_score, to_grid)


def start_row(batch: int, n_tokens: int, n_prefix: int, n_lead: int, device) -> torch.Tensor:
    """The query row the map reads: CLS (token 0), or the mean over patch tokens without prefix tokens."""
    r = torch.zeros(batch, n_tokens, device=device)
    if n_prefix > 0:
        r[:, 0] = 1.0
    else:
        r[:, n_lead:] = 1.0 / (n_tokens - n_lead)
    return r


def gae(model: torch.nn.Module, images: torch.Tensor, target: Target = None,
        forward_kwargs: Optional[dict] = None) -> Attribution:
    """Chefer et al.'s gradient-weighted rollout of ``target`` (default: the prediction).

    Args:
        model: a :func:`toast_core.build_model` model in eval mode (any method).
        images: (B, 3, H, W) normalised images, any size the backbone accepts.
        target: class per image (B,), one class for all (int), or None for the predicted class.
        forward_kwargs: extra keyword arguments of the model's forward (e.g. TOAST ``td_scale``).

    Returns:
        :class:`~toast_core.attribution.gradients.Attribution` with maps (B, h, w) ≥ 0. For TOAST the
        map explains the top-down pass given the bottom-up pass (which runs without gradients).
    """
    rec = AttributionRecorder(outputs=True)
    _, result = run_forward(model, images, rec, forward_kwargs)
    target = resolve_target(target, result.logits)
    calls = rec.calls[rec.final_index]
    grads = torch.autograd.grad(target_score(result.logits, target), [c.out for c in calls])
    layout = rec.layout()
    _, n_prefix, n_prompts = layout
    lead = n_prefix + n_prompts
    B, _, N, _ = calls[0].q.shape
    r = start_row(B, N, n_prefix, lead, images.device)
    with torch.no_grad():
        for layer in range(len(calls) - 1, -1, -1):
            call = calls[layer]
            a = call.weights()
            cam = (call.weight_grad(grads[layer]) * a).clamp_min(0).mean(dim=1)  # (B, N, N)
            r = r + (r.unsqueeze(1) @ cam).squeeze(1)
    return Attribution("gae", to_grid(r, layout), target, result.logits.detach(), detached(result),
                       scope("gae", result.passes))
