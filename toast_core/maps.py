"""Map kinds on the patch grid, from an :class:`~toast_core.recording.AttentionResult` or a model.

Every function returns a float tensor shaped (B, h, w). Kinds (labels used on screen and in exports):

* ``cls`` — softmax attention of the CLS query to each patch, one layer, one head or the head mean;
* ``rollout`` — attention rollout (Abnar & Zuidema, 2020): the product over layers of the
  head-averaged attention mixed with the identity for the residual path, CLS row;
* ``token_norm`` — L2 norm of each output token of a layer (the TOAST paper's figures use this);
* ``integrated_gradients`` — Integrated Gradients of the predicted class w.r.t. the input pixels
  (captum), |attribution| summed over channels and averaged per patch;
* ``gae``, ``legrad``, ``gradcam``, ``attnlrp`` — attribution kinds of :mod:`toast_core.attribution`
  (Chefer's gradient-weighted rollout, LeGrad, Grad-CAM on the last block, AttnLRP), for a ``target``
  class (default: the prediction); ``attnlrp`` is signed (:data:`SIGNED_KINDS`).
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from .attribution import ATTRIBUTION_KINDS, SIGNED_KINDS, attribute, scope
from .recording import AttentionResult, extract_attention

MAP_KINDS: dict[str, str] = {
    "cls": "CLS attention",
    "rollout": "attention rollout",
    "token_norm": "token norm",
    "integrated_gradients": "Integrated Gradients",
    **{key: label for key, (label, _) in ATTRIBUTION_KINDS.items()},
}
ATTENTION_KINDS = ("cls", "rollout", "token_norm")
#: kinds that have one map per layer (a Layers strip): the attention kinds and LeGrad (each layer's own term)
PER_LAYER_KINDS = ATTENTION_KINDS + ("legrad",)
__all__ = ["ATTENTION_KINDS", "ATTRIBUTION_KINDS", "MAP_KINDS", "PER_LAYER_KINDS", "SIGNED_KINDS", "compute_map", "describe_map",
           "integrated_gradients", "maps_for", "patch_grid", "rollout"]


def _pass(result: AttentionResult, pass_name: Optional[str]) -> str:
    name = pass_name or result.final_pass
    if name not in result.passes:
        raise ValueError(f"pass '{name}' not recorded; passes: {result.passes}")
    return name


def cls_map(result: AttentionResult, layer: int = -1, head: Optional[int] = None,
            pass_name: Optional[str] = None) -> torch.Tensor:
    """CLS→patch attention of one layer: the head mean (head=None) or one head. (B, h, w)."""
    name = _pass(result, pass_name)
    if head is None:
        return result.cls[name][layer]
    return result.heads[name][layer][:, head]


def token_norm_map(result: AttentionResult, layer: int = -1, pass_name: Optional[str] = None) -> torch.Tensor:
    """L2 norm of each patch token leaving block ``layer``. (B, h, w)."""
    return result.token_norm[_pass(result, pass_name)][layer]


def rollout_steps(result: AttentionResult, pass_name: Optional[str] = None, start_layer: int = 0,
                  end_layer: Optional[int] = None, residual: float = 0.5) -> Iterator[torch.Tensor]:
    """Attention rollout ending at each layer from ``start_layer`` to ``end_layer`` (inclusive; default
    last), in turn: one (B, h, w) map per layer. Needs ``full=True`` recording.

    Each layer's head-averaged attention A becomes ``residual·I + (1-residual)·A`` (rows renormalised to
    1), the matrices are multiplied from ``start_layer`` up, and the CLS row's patch entries form the map
    (without a CLS token: the mean over patch rows).
    """
    if result.full is None:
        raise ValueError("rollout needs full attention matrices: extract_attention(..., full=True)")
    mats = result.full[_pass(result, pass_name)].mean(dim=2)  # (L, B, N, N)
    end = mats.shape[0] - 1 if end_layer is None else end_layer % mats.shape[0]
    n = mats.shape[-1]
    eye = torch.eye(n, dtype=mats.dtype, device=mats.device)
    joint = eye.expand_as(mats[0]).clone()
    lead = result.num_prefix_tokens + result.num_prompt_tokens
    h, w = result.grid
    for layer in range(start_layer, end + 1):
        a = residual * eye + (1.0 - residual) * mats[layer]
        joint = (a / a.sum(dim=-1, keepdim=True)) @ joint
        row = joint[:, 0, lead:] if result.num_prefix_tokens > 0 else joint[:, lead:, lead:].mean(dim=1)
        yield row.reshape(row.shape[0], h, w)


def rollout(result: AttentionResult, pass_name: Optional[str] = None, start_layer: int = 0,
            end_layer: Optional[int] = None, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout up to ``end_layer`` (inclusive; default last): the last map of
    :func:`rollout_steps`. (B, h, w)."""
    last = None
    for last in rollout_steps(result, pass_name, start_layer, end_layer, residual):
        pass
    if last is None:
        raise ValueError(f"rollout from layer {start_layer} to {end_layer}: an empty range")
    return last


def rollout_all_layers(result: AttentionResult, pass_name: Optional[str] = None, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout from layer 0 ending at every layer in turn. (L, B, h, w)."""
    return torch.stack(list(rollout_steps(result, pass_name, residual=residual)))


def patch_grid(model: torch.nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """The patch grid a backbone makes of ``images`` (read from its patch embedding)."""
    vit = getattr(model, "vit", model)
    ph, pw = vit.patch_embed.patch_size
    return images.shape[-2] // ph, images.shape[-1] // pw


def integrated_gradients(model: torch.nn.Module, images: torch.Tensor, target: Optional[torch.Tensor] = None,
                         steps: int = 16, forward_kwargs: Optional[dict] = None,
                         internal_batch_size: Optional[int] = None, signed: bool = False) -> torch.Tensor:
    """Integrated Gradients (captum) of ``target`` (default: the predicted class), pooled per patch.

    Args:
        images: (B, 3, H, W) normalised images; the baseline is the all-zero (mean) image.
        target: (B,) class indices; None = argmax of the model's prediction.
        steps: integration steps (captum's ``n_steps``).

        signed: keep the sign (channels summed, then the patch mean): positive where the pixels raise the
            target's logit against the baseline, negative where they lower it.

    Returns:
        (B, h, w) mean |attribution| per patch (channels summed), or the signed mean with ``signed``.
    """
    from captum.attr import IntegratedGradients

    kwargs = forward_kwargs or {}
    was_training = model.training
    model.eval()
    try:
        if target is None:
            with torch.no_grad():
                target = model(images, **kwargs).argmax(dim=-1)
        ig = IntegratedGradients(lambda x: model(x, **kwargs))
        attr = ig.attribute(images, baselines=torch.zeros_like(images), target=target, n_steps=steps,
                            internal_batch_size=internal_batch_size or images.shape[0] * steps)
    finally:
        model.train(was_training)
    heat = attr.detach().sum(dim=1, keepdim=True) if signed else attr.detach().abs().sum(dim=1, keepdim=True)
    return F.adaptive_avg_pool2d(heat, patch_grid(model, images)).squeeze(1)


def compute_map(kind: str, result: AttentionResult, *, layer: int = -1, head: Optional[int] = None,
                pass_name: Optional[str] = None) -> torch.Tensor:
    """One attention-derived map kind from a recorded result. (B, h, w)."""
    if kind == "cls":
        return cls_map(result, layer, head, pass_name)
    if kind == "rollout":
        return rollout(result, pass_name, end_layer=layer)
    if kind == "token_norm":
        return token_norm_map(result, layer, pass_name)
    raise ValueError(f"unknown attention map kind '{kind}'; choose from {ATTENTION_KINDS}")


def maps_for(model: torch.nn.Module, images: torch.Tensor, kind: str = "cls", *, layer: int = -1,
             head: Optional[int] = None, pass_name: Optional[str] = None,
             forward_kwargs: Optional[dict] = None, target=None) -> tuple[torch.Tensor, AttentionResult]:
    """Run the model once and return the chosen map kind (B, h, w) and the recorded result.

    ``target`` (class per image, one class, or None = the prediction) is the class the gradient kinds
    (``integrated_gradients`` and the attribution kinds) explain; attention kinds ignore it. The
    attribution kinds ignore ``layer``, ``head`` and ``pass_name`` (what each explains: :func:`describe_map`).
    """
    if kind in ATTRIBUTION_KINDS:
        a = attribute(kind, model, images, target=target, forward_kwargs=forward_kwargs)
        return a.maps, a.result
    result = extract_attention(model, images, full=(kind == "rollout"), forward_kwargs=forward_kwargs)
    if kind == "integrated_gradients":
        return integrated_gradients(model, images, target=target, forward_kwargs=forward_kwargs), result
    return compute_map(kind, result, layer=layer, head=head, pass_name=pass_name), result


def describe_map(kind: str, layer: Optional[int] = None, head: Optional[int] = None,
                 pass_name: Optional[str] = None, num_layers: Optional[int] = None,
                 passes: Optional[tuple[str, ...]] = None) -> str:
    """A human label for a map, e.g. ``"CLS attention · layer 12/12 · head mean · top-down pass"`` or
    ``"LeGrad · ≥ 0 · top-down pass given bottom-up pass"``.

    For the attribution kinds, ``passes`` (all pass names; default: TOAST's bottom-up then ``pass_name``)
    says what the map explains on a multi-pass model.
    """
    parts = [MAP_KINDS.get(kind, kind)]
    if kind in ATTRIBUTION_KINDS:
        parts.append("signed" if kind in SIGNED_KINDS else "≥ 0")
        if passes is None and pass_name and pass_name != "main":
            passes = ("bottom-up", pass_name)  # the one multi-pass method: TOAST
        if passes and len(passes) > 1:
            parts.append(scope(kind, tuple(passes)))
        return " · ".join(parts)
    if kind in ATTENTION_KINDS and layer is not None:
        idx = layer % num_layers if num_layers else layer
        parts.append(f"layer {idx + 1}" + (f"/{num_layers}" if num_layers else ""))
    if kind == "cls":
        parts.append("head mean" if head is None else f"head {head + 1}")  # counted from 1, like layers
    if pass_name and pass_name != "main" and kind in ATTENTION_KINDS:
        parts.append(f"{pass_name} pass")
    return " · ".join(parts)
