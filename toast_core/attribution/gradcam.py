"""Grad-CAM (Selvaraju et al., 2017) on the last block's patch tokens, ``gradcam``.

The activations are the last block's attention input (its norm1 output, as in pytorch-grad-cam's ViT
recipe: the block's output patch tokens never reach the CLS token, so their gradient is zero). Each
channel is weighted by its gradient averaged over the patch tokens, the weighted channels are summed
and the positive part is kept: cam = ReLU(Σ_c mean_p(∂y/∂a_pc)·a_c).

Prefix tokens (CLS, registers) and VPT prompts are left out of the average and of the map, for any grid.
Activations and gradients come from the same call of the same pass (the final one): for TOAST, the
top-down pass given the bottom-up pass.
"""
from __future__ import annotations

from typing import Optional

import torch

from .gradients import (Attribution, AttributionRecorder, Target, detached, resolve_target, run_forward, scope,
                        target_score)


def gradcam(model: torch.nn.Module, images: torch.Tensor, target: Target = None,
            forward_kwargs: Optional[dict] = None) -> Attribution:
    """Grad-CAM of ``target`` (default: the prediction) on the final pass's last block.

    Args and return value as :func:`toast_core.attribution.gae.gae`; maps (B, h, w) ≥ 0, not rescaled
    (pytorch-grad-cam min-max scales each map; do that for display only).
    """
    rec = AttributionRecorder(inputs=True)
    _, result = run_forward(model, images, rec, forward_kwargs)
    target = resolve_target(target, result.logits)
    act = rec.inputs[rec.final_index][-1]  # (B, N, C): the last block's attention input, on the graph
    (grad,) = torch.autograd.grad(target_score(result.logits, target), [act])
    (h, w), n_prefix, n_prompts = rec.layout()
    lead = n_prefix + n_prompts
    with torch.no_grad():
        a, g = act[:, lead:].float(), grad[:, lead:].float()  # (B, P, C) patch tokens
        weights = g.mean(dim=1, keepdim=True)  # (B, 1, C)
        cam = (a * weights).sum(dim=-1).clamp_min(0)
    return Attribution("gradcam", cam.reshape(cam.shape[0], h, w), target, result.logits.detach(),
                       detached(result), scope("gradcam", result.passes))
