"""Attribution maps beside attention: which patches the prediction depends on, by four published methods.

Every kind runs on the library's own attention layer and recorder (per call, thread-local, nothing
installed on the model), for every transfer method, batched, on any grid, on CPU and GPU:

=========  ==============================================================  ======  =========================
key        method                                                          sign    TOAST: what it explains
=========  ==============================================================  ======  =========================
``gae``    gradient-weighted attention rollout (Chefer et al., ICCV 2021)  ≥ 0     top-down pass | bottom-up
``legrad`` LeGrad (Bousselham et al., 2024)                                ≥ 0     top-down pass | bottom-up
``gradcam`` Grad-CAM on the last block's patch tokens                       ≥ 0     top-down pass | bottom-up
``attnlrp`` AttnLRP (Achtibat et al., ICML 2024)                            signed  both passes + feedback
=========  ==============================================================  ======  =========================

The first three backpropagate to attention or tokens of the pass the prediction comes from; TOAST's
bottom-up pass runs without gradients, so they explain the top-down pass *given* the bottom-up one.
AttnLRP backpropagates to the pixels, through both passes, the token selection and the feedback path.

Usage::

    from toast_core.attribution import attribute
    a = attribute("gae", model, images)          # a.maps (B, h, w), a.target, a.explains
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import InputError
from .attnlrp import attnlrp
from .gae import gae
from .gradcam import gradcam
from .gradients import Attribution, Target, scope
from .legrad import legrad

#: key -> (label, function)
ATTRIBUTION_KINDS = {
    "gae": ("gradient-weighted rollout (Chefer)", gae),
    "legrad": ("LeGrad", legrad),
    "gradcam": ("Grad-CAM (last block)", gradcam),
    "attnlrp": ("AttnLRP", attnlrp),
}
#: kinds whose maps take both signs (show them on a diverging scale)
SIGNED_KINDS = ("attnlrp",)
#: one line per kind, with its sign convention (for captions and help texts)
EXPLANATIONS = {
    "gae": "Chefer et al.'s rollout of head-averaged (gradient × attention)⁺ from the identity, CLS row; ≥ 0.",
    "legrad": "Gradient of each layer's class score w.r.t. its attention, positive part, averaged over "
              "heads, queries and layers; ≥ 0.",
    "gradcam": "Last block's patch tokens weighted by their mean gradient, positive part; ≥ 0.",
    "attnlrp": "Relevance propagated by the AttnLRP rules, summed per patch; red supports the class, "
               "blue speaks against it (sums to about the logit).",
}


def attribute(kind: str, model: torch.nn.Module, images: torch.Tensor, target: Target = None,
              forward_kwargs: Optional[dict] = None, **options) -> Attribution:
    """Compute one attribution kind (``gae``, ``legrad``, ``gradcam``, ``attnlrp``) for a batch.

    Args:
        kind: a key of :data:`ATTRIBUTION_KINDS`.
        model: a :func:`toast_core.build_model` model in eval mode.
        images: (B, 3, H, W) normalised images.
        target: class per image, one class, or None (the prediction).
        forward_kwargs: extra keyword arguments of the model's forward (TOAST ``td_scale``, ``xi``).
        **options: kind-specific (``legrad``: ``last_layers``; ``attnlrp``: ``rule``, ``track_softmax``).
    """
    if kind not in ATTRIBUTION_KINDS:
        raise InputError(f"unknown attribution kind {kind!r}; choose from {list(ATTRIBUTION_KINDS)}")
    return ATTRIBUTION_KINDS[kind][1](model, images, target=target, forward_kwargs=forward_kwargs, **options)


__all__ = ["ATTRIBUTION_KINDS", "EXPLANATIONS", "SIGNED_KINDS", "Attribution", "attnlrp", "attribute", "scope",
           "gae", "gradcam", "legrad"]
