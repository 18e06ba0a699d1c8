"""One frozen backbone pass for every model that starts with it (linear probe, TOAST, TOAST-Lite).

The linear probe's only pass, TOAST's bottom-up pass and TOAST-Lite's bottom-up pass are the same
computation when the models share the backbone weights and the input: the plain backbone
(``run_blocks(images)``, nothing added; the methods' ``plain_first_pass`` capability). On the default
models that is 2 of the 9 backbone passes of one comparison. :func:`record_shared` runs it once, in the
first TOAST-family model's recording, and gives it to the others:

* a TOAST-family model runs only its top-down pass (``forward(first_pass=...)``), and its recording
  takes the bottom-up pass's maps from the donor's;
* a linear probe's recording is the donor's bottom-up pass, renamed ``main``, with its own head applied
  to the shared output tokens.

Sharing is exact (same weights, same input tensor, same code), and :func:`share_groups` only groups
models whose frozen backbone digests and preprocessed inputs are equal.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Callable, Sequence

import torch

from ..io.checkpoints import state_digest
from ..recording import DEFAULT_PASS, AttentionResult, extract_attention
from .entries import ModelEntry

_DIGESTS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()

PER_PASS = ("cls", "heads", "prefix_mass", "prompt_mass", "token_norm")


def backbone_digest(model: torch.nn.Module) -> str:
    """sha256 of the backbone's weights without its head (cached per model object; shared models are
    never modified)."""
    if model not in _DIGESTS:
        _DIGESTS[model] = state_digest({k: v for k, v in model.vit.state_dict().items() if not k.startswith("head.")})
    return _DIGESTS[model]


def share_groups(entries: Sequence[ModelEntry], inputs: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of ``entries`` that can share one frozen pass: ≥ 2 models with ``plain_first_pass``, at
    least one of them with a top-down pass (the donor, listed first), equal backbone digests, devices and
    preprocessed ``inputs``. Entries in no group are left out."""
    groups: list[list[int]] = []
    for i, e in enumerate(entries):
        if not getattr(e.model, "plain_first_pass", False):
            continue
        for g in groups:
            j = g[0]
            if (entries[j].device == e.device and inputs[j].shape == inputs[i].shape
                    and torch.equal(inputs[j], inputs[i])
                    and backbone_digest(entries[j].model) == backbone_digest(e.model)):
                g.append(i)
                break
        else:
            groups.append([i])
    out = []
    for g in groups:
        donors = [i for i in g if entries[i].is_toast]
        if len(g) >= 2 and donors:
            out.append([donors[0]] + [i for i in g if i != donors[0]])
    return out


class _FirstPass:
    """``images -> (tokens, grid)``: the donor's bottom-up pass, run (and recorded) once."""

    def __init__(self, donor: torch.nn.Module):
        self.donor, self.out = donor, None

    def __call__(self, images: torch.Tensor):
        if self.out is None:
            self.out = self.donor.bottom_up(images)
        return self.out.tokens, self.out.grid


def _with_first_pass(res: AttentionResult, donor: AttentionResult, as_name: str | None = None) -> AttentionResult:
    """``res`` with the donor's first pass put before its own passes (or, with ``as_name``, the donor's
    first pass alone under that name: a linear probe's ``main``)."""
    first = donor.passes[0]
    if as_name is not None:
        pick = {k: ({as_name: getattr(donor, k)[first]} if first in getattr(donor, k) else {}) for k in PER_PASS}
        full = None if donor.full is None else {as_name: donor.full[first]}
        return dataclasses.replace(donor, passes=(as_name,), full=full, gate=None, td_norm=None, value_ratio=None,
                                   value_ratio_max=None, **pick)
    merged = {k: {**({first: getattr(donor, k)[first]} if first in getattr(donor, k) else {}), **getattr(res, k)}
              for k in PER_PASS}
    full = None if res.full is None else {first: donor.full[first], **res.full}
    return dataclasses.replace(res, passes=(first, *res.passes), full=full, **merged)


def record_shared(entries: Sequence[ModelEntry], inputs: Sequence[torch.Tensor], full: bool,
                  finish: Callable[[ModelEntry, AttentionResult], object]) -> list:
    """Record a :func:`share_groups` group (donor first) with one frozen pass; ``finish(entry, result)``
    turns each :class:`AttentionResult` into what the caller keeps. Returns those, in group order."""
    donor = entries[0]
    first = _FirstPass(donor.model)
    res0 = extract_attention(donor.model, inputs[0], full=full, forward_kwargs={"first_pass": first})
    out = [finish(donor, res0)]
    for e, x in zip(entries[1:], inputs[1:]):
        if e.is_toast:
            own = extract_attention(e.model, x, full=full, forward_kwargs={"first_pass": first})
            out.append(finish(e, _with_first_pass(own, res0)))
        else:  # a linear probe: the shared pass is all it runs; only its head is its own
            logits = e.model.classify(first.out.tokens)
            out.append(finish(e, dataclasses.replace(_with_first_pass(res0, res0, as_name=DEFAULT_PASS), logits=logits)))
    return out
