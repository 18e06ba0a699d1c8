"""One attention layer for every transfer method.

``SteerableAttention`` is timm's ``Attention`` (same parameters, same maths) with two additions that
are switched on per call, never by mutating the module:

* **recording**: while a :class:`~toast_core.recording.AttentionRecorder` is active in the current
  thread, the layer hands it its attention weights. In the default ``"rows"`` mode the output is still
  computed with fused attention and only the prefix-token query rows of ``softmax(QKᵀ/√d)`` are
  computed on the side (O(N) extra work instead of O(N²)); in ``"full"`` mode the layer runs the
  unfused path and hands over the whole (B, H, N, N) matrix.
* **attribution hooks**: an active recorder sees (and may replace) the layer's input, its q, k, v and
  its per-head output; the base recorder passes them through unchanged, the recorders of
  :mod:`toast_core.attribution` use them for gradients w.r.t. attention with fused attention kept on.
* **top-down steering** (TOAST): while a :func:`steering` context maps this module to a value term
  ``dv`` (B, H, N, D), the values become ``V + dv`` (queries and keys untouched). TOAST builds ``dv``
  from its top-down signal td as ``W_v·td`` (:meth:`SteerableAttention.value_projection`; in the
  authors' compatibility mode the value bias is added a second time, as their code does) or, for
  large batches, from a folded feedback operator (:meth:`SteerableAttention.folded_values`).

The per-call state lives in a thread-local stack, so a model cached and shared between threads
(Streamlit sessions) is never modified: two sessions can record and steer the same model at once.
The layer is installed through timm's own extension point, ``create_model(..., attn_layer=...)``.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask

_local = threading.local()


@dataclass
class _Frame:
    recorder: Optional[object] = None  # toast_core.recording.AttentionRecorder
    values: dict = field(default_factory=dict)  # SteerableAttention -> (B, H, N, D) added to its values


def _stack() -> list[_Frame]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def current_recorder():
    """The innermost active recorder of this thread, or None."""
    for frame in reversed(_stack()):
        if frame.recorder is not None:
            return frame.recorder
    return None


@contextmanager
def push_frame(frame: _Frame) -> Iterator[_Frame]:
    """Make ``frame`` visible to attention layers running in this thread; always popped on exit."""
    stack = _stack()
    stack.append(frame)
    try:
        yield frame
    finally:
        # Remove exactly this frame even if an inner context misbehaved.
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is frame:
                del stack[i]
                break


@contextmanager
def steering(values_by_module: dict) -> Iterator[None]:
    """Add top-down terms to the values of the given attention modules for the duration of the block.

    Args:
        values_by_module: ``{attention_module: dv}`` with ``dv`` shaped (B, H, N, D) like the module's
            values (:meth:`SteerableAttention.value_projection` or :meth:`~SteerableAttention.folded_values`).
    """
    with push_frame(_Frame(values=dict(values_by_module))):
        yield


def _lookup_values(module) -> Optional[torch.Tensor]:
    for frame in reversed(_stack()):
        if module in frame.values:
            return frame.values[module]
    return None


class SteerableAttention(Attention):
    """timm ``Attention`` that can record its weights and accept a top-down value term."""

    def value_projection(self, td: torch.Tensor, official: bool = False) -> torch.Tensor:
        """W_v·td (plus b_v in the authors' mode), shaped (B, H, N, D)."""
        B, N, _ = td.shape
        a = self.attn_dim
        if official:
            # The authors push td through the whole qkv projection (bias included) and keep V.
            v = self.qkv(td)[..., 2 * a:]
        else:
            v = F.linear(td, self.qkv.weight[2 * a:])
        return self._heads(v)

    def _heads(self, v: torch.Tensor) -> torch.Tensor:
        """(B, N, attn_dim) -> (B, H, N, D)."""
        B, N, _ = v.shape
        return v.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def folded_values(self, h: torch.Tensor, feedback_weight: torch.Tensor, official: bool = False) -> torch.Tensor:
        """W_v·(F·h) (+ b_v in the authors' mode) computed as (W_v F)·h, shaped (B, H, N, D).

        The same values as :meth:`value_projection` of ``td = F·h``, but the C×C product ``W_v F`` is
        formed once per call (2·C³ FLOPs) instead of projecting every token twice.
        """
        a = self.attn_dim
        w = self.qkv.weight[2 * a:] @ feedback_weight
        b = self.qkv.bias[2 * a:] if official and self.qkv.bias is not None else None
        return self._heads(F.linear(h, w, b))

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        B, N, C = x.shape
        rec = current_recorder()
        dv = _lookup_values(self) if _local.__dict__.get("stack") else None
        if rec is not None:  # attribution recorders may swap in a leaf or re-route gradients (no-ops otherwise)
            x = rec.attention_input(self, x)

        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, D)
        q, k = self.q_norm(q), self.k_norm(k)
        if dv is not None:
            if rec is not None:
                rec.add_value_term(self, dv, v)
            v = v + dv
        if rec is not None:
            q, k, v = rec.attention_qkv(self, q, k, v)

        full = rec is not None and rec.wants_full(self)
        if self.fused_attn and not full:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask,
                dropout_p=self.attn_drop.p if self.training else 0.0, is_causal=is_causal)
            if rec is not None:
                n_rows = rec.rows_wanted(self)
                logits = q[:, :, :n_rows] @ k.transpose(-2, -1)  # (B, H, n_rows, N), unscaled
                bias = resolve_self_attn_mask(N, logits, attn_mask, is_causal)
                if bias is None:  # the recorder applies scale and softmax to all layers at once
                    rec.add_attention(self, logits, full=False, scale=self.scale)
                else:
                    rows = maybe_add_mask(logits * self.scale, bias[..., :n_rows, :])
                    rec.add_attention(self, rows.float().softmax(dim=-1), full=False)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
            attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
            attn = attn.softmax(dim=-1)
            if rec is not None:
                rec.add_attention(self, attn, full=True)
            out = self.attn_drop(attn) @ v
        if rec is not None:
            out = rec.attention_output(self, q, k, v, out)  # (B, H, N, D)

        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        out = self.norm(out)
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))
