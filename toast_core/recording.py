"""One recorder for every method: what each attention layer attended to, per pass, on the patch grid.

Usage::

    result = extract_attention(model, images)          # any registered method
    result.cls["top-down"].shape                       # (layers, batch, h, w) for TOAST
    result.final("cls")                                # the pass the prediction came from

The recorder is active only inside :func:`record` (a context manager); it lives in thread-local state
(see :mod:`toast_core.attention`), installs nothing on the model and leaves nothing behind, also when
the forward pass raises.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from .attention import _Frame, current_recorder, push_frame

DEFAULT_PASS = "main"


@dataclass
class _Pass:
    name: str
    attn: list = field(default_factory=list)  # per layer: (B, H, R, N) rows or (B, H, N, N) full
    scales: list = field(default_factory=list)  # per layer: None (attn holds weights) or the logits' scale
    tokens: list = field(default_factory=list)  # per layer: (B, N) token norms of the block output
    layout: Optional[tuple] = None  # (grid, num_prefix, num_prompts)


class AttentionRecorder:
    """Collects attention weights from every :class:`SteerableAttention` that runs while it is active.

    Args:
        full: keep full token-to-token matrices (runs the unfused path); otherwise only the query rows
            of the prefix tokens are computed, beside fused attention.
        keep_grad: keep the autograd graph of the recorded weights (for gradient-weighted maps).
        token_norm: also keep the L2 norm of every block's output tokens (one reduction per block).
    """

    def __init__(self, full: bool = False, keep_grad: bool = False, token_norm: bool = True):
        self.full = full
        self.keep_grad = keep_grad
        self.token_norm = token_norm
        self.passes: list[_Pass] = []
        self.extras: dict[str, torch.Tensor] = {}

    # -- called by the model -------------------------------------------------------------------
    def begin_pass(self, name: str) -> None:
        self.passes.append(_Pass(name))

    def _current(self) -> _Pass:
        if not self.passes:
            self.begin_pass(DEFAULT_PASS)
        return self.passes[-1]

    def set_layout(self, grid: tuple[int, int], num_prefix: int, num_prompts: int) -> None:
        self._current().layout = (tuple(int(g) for g in grid), int(num_prefix), int(num_prompts))

    def add_tokens(self, x: torch.Tensor) -> None:
        if not self.token_norm:
            return
        self._current().tokens.append(self._keep(x.norm(dim=-1)))

    def add_extra(self, name: str, value: torch.Tensor) -> None:
        self.extras[name] = self._keep(value)

    def add_value_term(self, module, dv: torch.Tensor, v: torch.Tensor) -> None:
        """TOAST: the top-down value term ``dv`` against the values ``v`` it is added to, both (B, H, N, D).

        Keeps, per layer and image, mean_i |dv_i| / mean_i |v_i| and max_i |dv_i| / |v_i| over tokens i
        (norms over all heads' channels, so W_v·td against W_v·norm1(x) + b_v).
        """
        dn = dv.detach().float().pow(2).sum(dim=(1, 3)).sqrt()  # (B, N)
        vn = v.detach().float().pow(2).sum(dim=(1, 3)).sqrt()
        mean = dn.mean(-1) / vn.mean(-1).clamp_min(1e-12)
        top = (dn / vn.clamp_min(1e-12)).amax(-1)
        self.extras.setdefault("_value_ratio", []).append(torch.stack([mean, top]))

    # -- called by the attention layer ---------------------------------------------------------
    def wants_full(self, module) -> bool:
        return self.full

    def rows_wanted(self, module) -> int:
        layout = self._current().layout
        return max(1, layout[1]) if layout else 1

    def add_attention(self, module, attn: torch.Tensor, full: bool, scale: Optional[float] = None) -> None:
        """Keep one layer's attention: the weights, or with ``scale`` the raw logits q·kᵀ.

        Logits are turned into weights, softmax(scale·logits), for all layers at once when the pass is
        summarised: a few large kernels at the end instead of several small ones in every block.
        """
        p = self._current()
        p.attn.append(self._keep(attn))
        p.scales.append(scale)

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.keep_grad else t.detach()

    # -- attribution hooks (identity here; the recorders of toast_core.attribution override them) -----
    def attention_input(self, module, x: torch.Tensor) -> torch.Tensor:
        """The attention layer's input (B, N, C), i.e. the block's norm1 output, before q, k, v."""
        return x

    def attention_qkv(self, module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Queries, keys and values (B, H, N, D) just before attention (top-down term included)."""
        return q, k, v

    def attention_output(self, module, q, k, v, out: torch.Tensor) -> torch.Tensor:
        """The per-head attention output A·V (B, H, N, D), before the heads are merged."""
        return out


@contextmanager
def record(full: bool = False, keep_grad: bool = False, token_norm: bool = True) -> Iterator[AttentionRecorder]:
    """Activate a recorder for attention layers running in this thread (removed on exit, always)."""
    rec = AttentionRecorder(full=full, keep_grad=keep_grad, token_norm=token_norm)
    with push_frame(_Frame(recorder=rec)):
        yield rec


def recorder_begin_pass(name: str) -> None:
    """Models with several passes (TOAST) name them; a no-op when nothing records."""
    rec = current_recorder()
    if rec is not None:
        rec.begin_pass(name)


@dataclass
class AttentionResult:
    """Attention of one batch, per pass (``"main"``, or TOAST's ``"bottom-up"`` and ``"top-down"``).

    Attributes:
        cls: head-averaged CLS→patch attention, ``{pass: (L, B, h, w)}``.
        heads: per-head CLS→patch attention, ``{pass: (L, B, H, h, w)}``.
        prefix_mass: share of the CLS row on prefix tokens (CLS itself, registers), ``{pass: (L, B)}``.
        prompt_mass: share of the CLS row on VPT prompt tokens, ``{pass: (L, B)}``.
        token_norm: L2 norm of each block's output patch tokens, ``{pass: (L, B, h, w)}``.
        full: full matrices over all tokens ``{pass: (L, B, H, N, N)}`` when requested, else None.
        logits: (B, classes).
        gate: TOAST token-selection map (B, h, w) or None.
        td_norm: TOAST per-layer mean L2 norm of the top-down signal (L, B) or None.
        value_ratio: TOAST per-layer size of the top-down value term against the values it is added
            to, mean_i |W_v td_i| / mean_i |v_i| over tokens (L, B), or None.
        value_ratio_max: the same per token, max_i |W_v td_i| / |v_i| (L, B), or None.
        grid, num_prefix_tokens, num_prompt_tokens: the token layout, read from the model.
    """

    passes: tuple[str, ...]
    cls: dict
    heads: dict
    prefix_mass: dict
    prompt_mass: dict
    token_norm: dict
    full: Optional[dict]
    logits: torch.Tensor
    grid: tuple[int, int]
    num_prefix_tokens: int
    num_prompt_tokens: int
    gate: Optional[torch.Tensor] = None
    td_norm: Optional[torch.Tensor] = None
    value_ratio: Optional[torch.Tensor] = None
    value_ratio_max: Optional[torch.Tensor] = None

    @property
    def final_pass(self) -> str:
        return self.passes[-1]

    def final(self, kind: str = "cls") -> torch.Tensor:
        """The maps of the pass the prediction comes from (kind: cls, heads, token_norm, ...)."""
        return getattr(self, kind)[self.final_pass]


def _weights(p: _Pass) -> torch.Tensor:
    """All layers' attention weights of a pass, stacked (L, ...) in float32."""
    stacked = torch.stack(p.attn).float()
    scales = set(p.scales)
    if scales == {None}:
        return stacked
    if len(scales) == 1:  # one scale for every layer (a ViT): one multiply and one softmax in all
        return (stacked * scales.pop()).softmax(dim=-1)
    return torch.stack([m if s is None else (m * s).softmax(dim=-1) for m, s in zip(stacked, p.scales)])


def _summarise(p: _Pass, want_full: bool, has_cls: bool) -> dict:
    grid, n_prefix, n_prompts = p.layout
    h, w = grid
    n_lead = n_prefix + n_prompts
    out = {}
    if p.attn:
        mats = _weights(p)  # (L, B, H, R, N) query rows, or (L, B, H, N, N) full matrices
        if has_cls:
            rows = mats[:, :, :, 0, :]  # (L, B, H, N) from the CLS query
        else:
            # No class token: use the mean attention that patch queries give each key.
            rows = mats[:, :, :, n_lead:, :].mean(dim=3)
        L, B, H, N = rows.shape
        if N != n_lead + h * w:
            raise RuntimeError(f"token count {N} does not match layout {n_prefix}+{n_prompts}+{h}x{w}")
        heads = rows[..., n_lead:].reshape(L, B, H, h, w)
        out["heads"] = heads
        out["cls"] = heads.mean(dim=2)
        out["prefix_mass"] = rows[..., :n_prefix].sum(-1).mean(-1)
        out["prompt_mass"] = rows[..., n_prefix:n_lead].sum(-1).mean(-1)
        if want_full:
            out["full"] = mats
    if p.tokens:
        norms = torch.stack(p.tokens).float()  # (L, B, N)
        out["token_norm"] = norms[..., n_lead:].reshape(norms.shape[0], norms.shape[1], h, w)
    return out


def extract_attention(model: torch.nn.Module, images: torch.Tensor, *, full: bool = False,
                      keep_grad: bool = False, forward_kwargs: Optional[dict] = None,
                      token_norm: bool = True, recorder: Optional[AttentionRecorder] = None) -> AttentionResult:
    """Run ``model(images)`` once and return what every layer attended to, for every pass.

    Args:
        model: a model built by :func:`toast_core.build_model` (any registered method).
        images: (B, 3, H, W) normalised images; any size the backbone accepts (non-square included).
        full: also return full (L, B, H, N, N) attention matrices (needed for rollout).
        keep_grad: keep the graph (for gradient-weighted maps); otherwise runs under ``no_grad``.
        forward_kwargs: extra keyword arguments for the model's forward (e.g. TOAST ``td_scale``).
        token_norm: also record each block's output-token norms (``result.token_norm``; empty when off).
        recorder: record with this (fresh) recorder instead of a plain one, e.g. an attribution recorder
            of :mod:`toast_core.attribution` that keeps what its map needs; ``full``, ``keep_grad`` and
            ``token_norm`` are then read from it.

    Returns:
        :class:`AttentionResult`.
    """
    has_cls = getattr(getattr(model, "vit", model), "cls_token", None) is not None
    if recorder is not None:
        full, keep_grad = recorder.full, recorder.keep_grad
    want_full = full or not has_cls
    rec = recorder if recorder is not None else AttentionRecorder(want_full, keep_grad, token_norm)
    rec.full = want_full
    grad_ctx = torch.enable_grad() if keep_grad else torch.no_grad()
    with grad_ctx, push_frame(_Frame(recorder=rec)):
        logits = model(images, **(forward_kwargs or {}))
    if not rec.passes or not rec.passes[0].attn:
        raise RuntimeError("no attention was recorded: is the model built with toast_core.build_model?")
    names = tuple(p.name for p in rec.passes)
    per_pass = {p.name: _summarise(p, want_full, has_cls) for p in rec.passes}
    first = rec.passes[0].layout
    pick = lambda key: {n: d[key] for n, d in per_pass.items() if key in d}  # noqa: E731
    return AttentionResult(
        passes=names, cls=pick("cls"), heads=pick("heads"), prefix_mass=pick("prefix_mass"),
        prompt_mass=pick("prompt_mass"), token_norm=pick("token_norm"),
        full=pick("full") if full else None, logits=logits if keep_grad else logits.detach(),
        grid=first[0], num_prefix_tokens=first[1], num_prompt_tokens=first[2],
        gate=rec.extras.get("gate"), td_norm=rec.extras.get("td_norm"),
        **_value_ratios(rec.extras.get("_value_ratio")))


def _value_ratios(per_layer: Optional[list]) -> dict:
    if not per_layer:
        return {}
    stacked = torch.stack(per_layer)  # (L, 2, B)
    return {"value_ratio": stacked[:, 0], "value_ratio_max": stacked[:, 1]}
