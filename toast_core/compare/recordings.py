"""One forward pass per model, image and steering setting, cached; every map is derived from it."""
from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..cache import LRU
from ..device import autocast
from ..errors import InputError
from ..attribution import attribute
from ..maps import (ATTENTION_KINDS, MAP_KINDS, PER_LAYER_KINDS, compute_map, describe_map, integrated_gradients,
                    rollout_all_layers)
from ..recording import AttentionResult, extract_attention
from .entries import ModelEntry
from .images import image_id, preprocess
from .shared_pass import record_shared, share_groups

RECORDINGS = LRU(int(os.environ.get("TOAST_RECORDING_CACHE", "48")))


ATTRIBUTIONS = LRU(int(os.environ.get("TOAST_ATTRIBUTION_CACHE", "16")))


@dataclass(frozen=True, eq=False)
class Recording:
    """What one model did on one image: attention of every layer/head/pass and the class probabilities.

    Attributes:
        result: the :class:`AttentionResult` (batch of 1); ``full`` holds head-averaged matrices
            ``{pass: (L, 1, 1, N, N)}`` (enough for rollout, 1/H of the memory) when recorded with
            ``full=True``, else None.
        probs: (classes,) softmax of the logits.
        td_scale, xi_patch: the steering setting it was recorded with (TOAST only).
    """

    result: AttentionResult
    probs: np.ndarray
    td_scale: float = 1.0
    xi_patch: Optional[tuple[int, int]] = None

    @property
    def passes(self) -> tuple[str, ...]:
        return self.result.passes

    @property
    def num_layers(self) -> int:
        return int(self.result.cls[self.result.passes[0]].shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.result.grid)


def _steering_kwargs(entry: ModelEntry, x: torch.Tensor, td_scale: float,
                     xi_patch: Optional[tuple[int, int]]) -> dict:
    if not entry.is_toast:
        if td_scale != 1.0 or xi_patch is not None:
            raise InputError(f"{entry.name} ({entry.method}) has no top-down pass to steer")
        return {}
    kwargs: dict = {}
    if td_scale != 1.0:
        kwargs["td_scale"] = float(td_scale)
    if xi_patch is not None:
        try:
            kwargs["xi"] = entry.model.token_at(x, int(xi_patch[0]), int(xi_patch[1]))
        except ValueError as e:
            raise InputError(str(e)) from None
    return kwargs


def needs_full(kind: str) -> bool:
    """Whether a map kind needs full token-to-token matrices (rollout); the others are read from the
    prefix tokens' query rows, which are computed beside fused attention."""
    return kind == "rollout"


def _recording(res: AttentionResult, td_scale: float = 1.0, xi_patch=None) -> Recording:
    """What the cache keeps of an :class:`AttentionResult`: full matrices head-averaged, probabilities."""
    slim = None if res.full is None else \
        {p: f.float().mean(dim=2, keepdim=True) for p, f in res.full.items()}  # (L,1,1,N,N)
    res = dataclasses.replace(res, full=slim, logits=res.logits.float())
    probs = res.logits.softmax(dim=-1)[0].cpu().numpy().astype(np.float64)
    return Recording(res, probs, float(td_scale), None if xi_patch is None else tuple(int(v) for v in xi_patch))


def _run(entry: ModelEntry, image: Image.Image, td_scale: float, xi_patch, full: bool) -> Recording:
    with torch.inference_mode(), autocast(entry.device):
        x = preprocess(entry, image)
        kwargs = _steering_kwargs(entry, x, td_scale, xi_patch)
        return _recording(extract_attention(entry.model, x, full=full, forward_kwargs=kwargs), td_scale, xi_patch)


def _key(entry: ModelEntry, image_key: str, td_scale: float, xi_patch) -> tuple:
    return (entry.key, entry.device, image_key, round(float(td_scale), 6), xi_patch)


def record(entry: ModelEntry, image: Image.Image, *, image_key: Optional[str] = None, td_scale: float = 1.0,
           xi_patch: Optional[tuple[int, int]] = None, full: bool = False) -> Recording:
    """The model's :class:`Recording` on ``image`` (cached per model key, image, td_scale, ξ patch).

    Args:
        image: an RGB PIL image (any size; see :func:`working_copy`).
        image_key: the image's :func:`image_id` if already known (saves hashing it again).
        td_scale: TOAST only: scale of the top-down signal (0 = bottom-up, 1 = as trained).
        xi_patch: TOAST only: ``(row, col)`` of the patch whose bottom-up token replaces ξ.
        full: also keep the (head-averaged) full attention matrices, which rollout needs
            (:func:`needs_full`); a cached full recording serves every request.
    """
    ik = image_key or image_id(image)
    xp = None if xi_patch is None else (int(xi_patch[0]), int(xi_patch[1]))
    key = _key(entry, ik, td_scale, xp)
    cached = _cached(key, full)
    if cached is not None:
        return cached
    return RECORDINGS.get_or_compute((*key, bool(full)), lambda: _run(entry, image, float(td_scale), xp, bool(full)))


def _cached(key: tuple, full: bool) -> Optional[Recording]:
    """A cached recording that serves ``full`` (a full recording serves every request), or None."""
    hit = RECORDINGS.peek((*key, True))
    return hit if hit is not None or full else RECORDINGS.peek((*key, False))


def record_workers(entries: Sequence[ModelEntry]) -> int:
    """How many models :func:`record_all` runs at once: ``$TOAST_RECORD_WORKERS`` when set, else one
    per free core on a CPU (cores ÷ torch threads per forward; the app runs one thread per forward, so
    2 on 2 cores) and 1 when any model is on a GPU (its kernels queue on one device anyway)."""
    raw = os.environ.get("TOAST_RECORD_WORKERS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        n = int(raw)
    elif any(not str(e.device).startswith("cpu") for e in entries):
        n = 1
    else:
        n = (os.cpu_count() or 1) // max(1, torch.get_num_threads())
    return max(1, min(n, len(entries)))


def record_all(entries: Sequence[ModelEntry], image: Image.Image, *, image_key: Optional[str] = None,
               full: bool = False, workers: Optional[int] = None, share: bool = True) -> list[Recording]:
    """Every entry's :func:`record` of one image (as trained: no steering), in entry order, the models
    run side by side.

    On a CPU one forward at one torch thread leaves the other cores idle (small ViTs parallelise
    poorly inside a forward, and intra-op threads of concurrent sessions oversubscribe the cores), so
    the models run in ``workers`` threads (default :func:`record_workers`); torch releases the GIL in
    its kernels. With ``share``, models that start with the same frozen backbone pass (linear probe,
    TOAST, TOAST-Lite on one backbone) run it once (:mod:`.shared_pass`; the results are identical).
    Cached recordings return at once. The first error raised is re-raised.
    """
    ik = image_key or image_id(image)
    missing = [e for e in entries if _cached(_key(e, ik, 1.0, None), full) is None]
    jobs, grouped = [], set()
    plain = [e for e in missing if getattr(e.model, "plain_first_pass", False)] if share else []
    if len(plain) >= 2:
        with torch.inference_mode():
            xs = [preprocess(e, image) for e in plain]
        for g in share_groups(plain, xs):  # longest jobs first: a group runs several models
            jobs.append(lambda g=g: _record_group([plain[i] for i in g], [xs[i] for i in g], ik, bool(full)))
            grouped.update(id(plain[i]) for i in g)
    jobs += [lambda e=e: record(e, image, image_key=ik, full=full) for e in missing if id(e) not in grouped]
    n = record_workers(missing) if workers is None else max(1, int(workers))
    if n == 1 or len(jobs) < 2:
        for job in jobs:
            job()
    else:
        with ThreadPoolExecutor(max_workers=min(n, len(jobs)), thread_name_prefix="toast-record") as pool:
            for f in [pool.submit(job) for job in jobs]:
                f.result()
    return [record(e, image, image_key=ik, full=full) for e in entries]  # cached now


def _record_group(group: list[ModelEntry], xs: list[torch.Tensor], image_key: str, full: bool) -> None:
    with torch.inference_mode(), autocast(group[0].device):
        recs = record_shared(group, xs, full, lambda e, res: _recording(res))
    for e, rec in zip(group, recs):
        RECORDINGS.put((*_key(e, image_key, 1.0, None), full), rec)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float64)


def resolve_pass(rec: Recording, pass_name: Optional[str]) -> str:
    """``None``/``"final"`` = the pass the prediction comes from; ``"first"`` = the first pass;
    otherwise a recorded pass name (``"bottom-up"``, ``"top-down"``, ``"main"``)."""
    if pass_name in (None, "final"):
        return rec.result.final_pass
    if pass_name == "first":
        return rec.passes[0]
    if pass_name not in rec.passes:
        return rec.result.final_pass  # e.g. "bottom-up" asked of a single-pass model
    return pass_name


def map_of(rec: Recording, kind: str, layer: int = -1, head: Optional[int] = None,
           pass_name: Optional[str] = None) -> np.ndarray:
    """One attention-derived map (h, w) float64 from a recording (kinds: cls, rollout, token_norm)."""
    if kind not in ATTENTION_KINDS:
        raise InputError(f"map kind {kind!r} is not derived from attention; choose from {ATTENTION_KINDS}")
    with torch.inference_mode():
        m = compute_map(kind, rec.result, layer=layer, head=head if kind == "cls" else None,
                        pass_name=resolve_pass(rec, pass_name))
    return _to_numpy(m[0])


def strip_of(rec: Recording, kind: str, head: Optional[int] = None, pass_name: Optional[str] = None) -> np.ndarray:
    """One attention-derived kind at every layer, (L, h, w); rollout in one sweep over the layers
    (each layer's map extends the previous product), not one rollout from layer 0 per layer."""
    if kind == "rollout":
        with torch.inference_mode():
            return _to_numpy(rollout_all_layers(rec.result, resolve_pass(rec, pass_name))[:, 0])
    return np.stack([map_of(rec, kind, layer, head, pass_name) for layer in range(rec.num_layers)])


def head_maps(rec: Recording, layer: int = -1, pass_name: Optional[str] = None) -> np.ndarray:
    """Every head's CLS attention of one layer, (H, h, w)."""
    return _to_numpy(rec.result.heads[resolve_pass(rec, pass_name)][layer][0])


def attribution(entry: ModelEntry, image: Image.Image, *, kind: str = "integrated_gradients",
                image_key: Optional[str] = None, steps: int = 16, td_scale: float = 1.0,
                xi_patch: Optional[tuple[int, int]] = None, per_layer: bool = False,
                target: Optional[int] = None, signed: bool = False) -> np.ndarray:
    """A gradient-based map of the predicted class (or class index ``target``), per patch, (h, w);
    cached, float32 computation. ``signed`` keeps Integrated Gradients' sign (other kinds ignore it).

    Kinds: ``integrated_gradients`` (captum, ``steps`` steps) or an attribution kind of
    :mod:`toast_core.attribution` (``gae``, ``legrad``, ``gradcam``, ``attnlrp``; signed for ``attnlrp``).
    ``per_layer`` (LeGrad only): every layer's own map, (L, h, w), instead of their mean.
    """
    if kind in ATTENTION_KINDS or kind not in MAP_KINDS:
        raise InputError(f"map kind {kind!r} is not a gradient-based kind; choose from "
                         f"{[k for k in MAP_KINDS if k not in ATTENTION_KINDS]}")
    if per_layer and kind not in PER_LAYER_KINDS:
        raise InputError(f"{MAP_KINDS[kind]} has no per-layer maps; per-layer kinds: {PER_LAYER_KINDS}")
    ik = image_key or image_id(image)
    xp = None if xi_patch is None else (int(xi_patch[0]), int(xi_patch[1]))
    n_steps = int(steps) if kind == "integrated_gradients" else None
    tgt = None if target is None else int(target)
    sgn = bool(signed) and kind == "integrated_gradients"
    key = (entry.key, entry.device, ik, kind, n_steps, round(float(td_scale), 6), xp, bool(per_layer), tgt, sgn)

    def compute() -> np.ndarray:
        with torch.inference_mode():
            x = preprocess(entry, image)
            kwargs = _steering_kwargs(entry, x, td_scale, xp)
        x = x.clone()  # a normal tensor (inference tensors cannot take part in autograd)
        kwargs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
        t = None if tgt is None else torch.tensor([tgt], device=x.device)
        if kind == "integrated_gradients":
            return _to_numpy(integrated_gradients(entry.model, x, target=t, steps=n_steps, forward_kwargs=kwargs,
                                                  internal_batch_size=min(n_steps, 8), signed=sgn)[0])
        a = attribute(kind, entry.model, x, forward_kwargs=kwargs, target=t)
        return _to_numpy(a.extras["per_layer"][:, 0] if per_layer else a.maps[0])

    return ATTRIBUTIONS.get_or_compute(key, compute)


def attribution_label(kind: str, passes: Sequence[str], ig_steps: int = 16, target: Optional[str] = None,
                      signed: bool = False) -> str:
    """The label of a gradient-based map: IG's steps (and sign), or what an attribution kind explains on
    TOAST; then the class explained (``target``: a class name, None = the predicted class)."""
    what = "predicted class" if target is None else f"class {target}"
    if kind == "integrated_gradients":
        return f"{MAP_KINDS[kind]} · {ig_steps} steps · " + ("signed · " if signed else "") + what
    return describe_map(kind, passes=tuple(passes)) + f" · {what}"


def top_predictions(probs: np.ndarray, class_names: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` most probable classes as ``(label, probability)``, most probable first."""
    order = np.argsort(-probs)[:k]
    names = list(class_names)
    return [(names[i] if i < len(names) else f"class {i}", float(probs[i])) for i in order]
