"""TOAST stage 1 by least squares: fit the top-down module to the frozen backbone, and measure the fit.

Pre-tuning's reconstruction loss, Σ_l MSE(A_l·out_l, in_l), is linear regression per block, so its exact
minimiser is a ridge solution; no number of gradient steps beats it, and 40 AdamW steps came nowhere near
it (R² −0.06…−0.50 against the ridge fit's 0.86–0.93 on held-out images). :func:`fit_topdown` computes it
from Gram statistics accumulated over generic photo crops (the stage-1 data of :mod:`toast_core.training.pretune`,
nothing from any downstream task), in two sweeps over the images:

1. **A_l** (``decoders.{l}.linear``): ridge fit of the block's input tokens from its output tokens,
   in_l ≈ A_l·out_l. **P** (``top_down_transform``): ridge fit of the last block's raw output from the
   final-normed tokens the feedback starts from, out_{L-1} ≈ x·P (tokens as rows), so the chain
   h_l = A_l ⋯ A_{L-1}·(x·P) starts at the scale the A_l were fitted on.
2. **B_l** (``decoders.{l}.linear2``): ridge fit, on the chained states h_l of sweep 1's maps, of
   ``norm1(in_l) − β_l`` — the normalised token the top-down value term is added beside — times
   ``td_gain``. So td_l ≈ td_gain·s·(norm1(x_l) − β_l) per selected token: the top-down pass starts by
   scaling the values of the tokens the gate selects by about (1 + td_gain·s). Residual-stream tokens
   (norm 1–10 in DINOv2) and ``norm1`` outputs (norm 18–40) differ by that factor, which the fit absorbs.

**ξ** (``prompt``) starts as the first principal component of the final patch tokens over the generic
crops, made orthogonal to their mean and signed to agree with the mean CLS token minus the mean patch
token (:func:`initial_xi`). In DINOv2 that component separates objects from background, so the gate
starts open on objects and shut on most of the background: on the default task's validation images it
starts at 0.26 on objects and 0.05 on background (3.55× a uniform gate's share on the target), against
0.37 / 0.13 (2.63×) for the earlier CLS-minus-patch start. On generic crops 55 % of tokens start open,
so the task loss reaches ξ through them. A unit norm lets Adam steps of 1e-3…1e-2 turn it.

:func:`stage1_diagnostics` measures, on held-out crops and per block: R² of A_l·out_l → in_l (the
reconstruction the loss asks for), R² of the chained h_l → in_l, R² of td_l → norm1(in_l) − β_l,
|W_v·td_l| / |W_v·norm1(in_l)| (the top-down value term against the value it is added to, at gate 1),
and the gate's statistics.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import InputError

Progress = Callable[[float, str], None]
STAGE1_KIND = "least-squares"


@dataclass
class Gram:
    """Sufficient statistics of a least-squares fit Y ≈ X·Wᵀ over rows (tokens), in float64."""

    xx: torch.Tensor  # (Cin, Cin) XᵀX
    xy: torch.Tensor  # (Cin, Cout) XᵀY
    yy: float  # Σ|y|²
    y_sum: torch.Tensor  # (Cout,) Σ y
    n: int

    @classmethod
    def empty(cls, c_in: int, c_out: int, device=None) -> "Gram":
        def z(*shape):
            return torch.zeros(*shape, dtype=torch.float64, device=device)
        return cls(z(c_in, c_in), z(c_in, c_out), 0.0, z(c_out), 0)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        y = y.reshape(-1, y.shape[-1]).double()
        self.xx += x.T @ x
        self.xy += x.T @ y
        self.yy += float((y * y).sum())
        self.y_sum += y.sum(0)
        self.n += x.shape[0]

    def solve(self, ridge: float = 1e-3) -> torch.Tensor:
        """W (Cout, Cin) minimising Σ|y − W x|² + λ|W|², with λ = ``ridge`` × mean diagonal of XᵀX."""
        xx, xy = self.xx.cpu(), self.xy.cpu()
        lam = ridge * float(xx.diagonal().mean())
        eye = torch.eye(xx.shape[0], dtype=torch.float64)
        return torch.linalg.solve(xx + lam * eye, xy).T.float()

    def r2(self, w: torch.Tensor) -> float:
        """1 − SSE/SST of the prediction x·Wᵀ on these statistics (SST around the mean of y)."""
        w = w.double().to(self.xx.device)
        sse = self.yy - 2 * float((w.T * self.xy).sum()) + float(((w @ self.xx) * w).sum())
        sst = self.yy - float((self.y_sum ** 2).sum()) / max(self.n, 1)
        return 1.0 - sse / max(sst, 1e-30)


def _batches(images: torch.Tensor, batch_size: int):
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size]


def _as_float(images: torch.Tensor, mean, std) -> torch.Tensor:
    if images.dtype == torch.uint8:
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        return (images.float() / 255.0 - m) / s
    return images.float()


def _chain(tokens: torch.Tensor, A: list, P: torch.Tensor) -> list:
    """h_l = A_l ⋯ A_{L-1}·(x·P) for every block (list in block order)."""
    hs = [None] * len(A)
    h = tokens @ P
    for l in range(len(A) - 1, -1, -1):
        h = hs[l] = h @ A[l].T
    return hs


def _norm1_target(block, x_in: torch.Tensor) -> torch.Tensor:
    """norm1(x) − β: the part of the block's normalised input a linear map of h_l can produce."""
    out = block.norm1(x_in)
    bias = getattr(block.norm1, "bias", None)
    return out - bias if bias is not None else out


@torch.no_grad()
def fit_topdown(model, images: torch.Tensor, *, mean=None, std=None, td_gain: float = 2.0,
                ridge: float = 1e-3, xi_init: str = "pc1", batch_size: int = 64,
                progress: Optional[Progress] = None) -> dict:
    """The least-squares stage 1 (module docstring) for a ``toast`` model's frozen backbone.

    Args:
        model: a ``toast`` / ``toast-lite`` model (only its backbone is used; nothing is modified).
        images: generic images, (N, 3, S, S) uint8 (normalised with ``mean``/``std``) or float (as is).
        td_gain: scale of B_l against the normalised input (td ≈ td_gain·s·(norm1(x) − β)).
        ridge: λ relative to the mean diagonal of each Gram matrix.
        xi_init: ξ's start, :func:`initial_xi` (``"pc1"`` or ``"cls-minus-patch"``).
    Returns:
        the top-down tensors by checkpoint name (``decoders.{l}.linear.weight``, ``...linear2.weight``,
        ``prompt``, ``top_down_transform``), float32.
    """
    if td_gain <= 0:
        raise InputError(f"td_gain must be > 0, got {td_gain}")
    if xi_init not in XI_INITS:
        raise InputError(f"xi_init must be one of {', '.join(XI_INITS)}, got {xi_init!r}")
    was_training = model.training
    model.eval()
    blocks = list(model.vit.blocks)
    L, C = len(blocks), model.vit.embed_dim
    dev = next(model.parameters()).device
    io_grams = [Gram.empty(C, C, dev) for _ in blocks]
    p_gram = Gram.empty(C, C, dev)
    n_prefix = int(model.num_prefix_tokens)
    prefix_sum = torch.zeros(C, dtype=torch.float64, device=dev)
    patch_sum = torch.zeros(C, dtype=torch.float64, device=dev)
    patch_xx = torch.zeros(C, C, dtype=torch.float64, device=dev)
    n_images = n_patches = 0
    n_batches = -(-len(images) // batch_size)
    for i, x in enumerate(_batches(images, batch_size)):
        out = model.run_blocks(_as_float(x, mean, std).to(dev), collect_io=True)
        for g, (x_in, x_out) in zip(io_grams, out.block_io):
            g.add(x_out, x_in)
        p_gram.add(out.tokens, out.block_io[-1][1])
        prefix_sum += out.tokens[:, 0].double().sum(0)  # the CLS token
        patches = out.tokens[:, n_prefix:].reshape(-1, C).double()
        patch_sum += patches.sum(0)
        patch_xx += patches.T @ patches
        n_images += out.tokens.shape[0]
        n_patches += out.tokens.shape[0] * (out.tokens.shape[1] - n_prefix)
        if progress:
            progress(0.5 * (i + 1) / n_batches, f"stage 1: block statistics, batch {i + 1}/{n_batches}")
    A = [g.solve(ridge).to(dev) for g in io_grams]
    P = p_gram.solve(ridge).T.to(dev)  # out ≈ x·P (tokens as rows)
    b_grams = [Gram.empty(C, C, dev) for _ in blocks]
    for i, x in enumerate(_batches(images, batch_size)):
        out = model.run_blocks(_as_float(x, mean, std).to(dev), collect_io=True)
        for g, blk, h, (x_in, _) in zip(b_grams, blocks, _chain(out.tokens, A, P), out.block_io):
            g.add(h, _norm1_target(blk, x_in))
        if progress:
            progress(0.5 + 0.5 * (i + 1) / n_batches, f"stage 1: feedback targets, batch {i + 1}/{n_batches}")
    B = [g.solve(ridge) * td_gain for g in b_grams]  # on the CPU
    xi = initial_xi(xi_init, prefix_sum / max(n_images, 1), patch_sum / max(n_patches, 1),
                    patch_xx / max(n_patches, 1))
    model.train(was_training)
    tensors = {"prompt": xi, "top_down_transform": P.cpu().contiguous()}
    for l in range(L):
        tensors[f"decoders.{l}.linear.weight"] = A[l].cpu().contiguous()
        tensors[f"decoders.{l}.linear2.weight"] = B[l].contiguous()
    return tensors


XI_INITS = ("pc1", "cls-minus-patch")


def initial_xi(kind: str, cls_mean: torch.Tensor, patch_mean: torch.Tensor,
               patch_second_moment: torch.Tensor) -> torch.Tensor:
    """ξ's task-agnostic start (unit norm, float32 on the CPU) from generic-image token statistics.

    ``"cls-minus-patch"``: the mean final CLS token minus the mean final patch token. ``"pc1"``: the
    first principal component of the final patch tokens (their covariance's top eigenvector) with its
    component along the mean patch token removed, signed to agree with the former. In DINOv2 the leading
    component of patch features separates objects from background (Oquab et al., 2023); removing the
    mean direction puts the average token at cosine ≈ 0, so the gate clamp(cos(x, ξ), 0, 1) starts open
    on objects and shut on most of the background. Args: the means (C,) and the patch tokens' second
    moment E[x xᵀ] (C, C).
    """
    diff = (cls_mean - patch_mean).double().cpu()
    if kind == "cls-minus-patch":
        xi = diff
    elif kind == "pc1":
        mu = patch_mean.double().cpu()
        cov = patch_second_moment.double().cpu() - torch.outer(mu, mu)
        xi = torch.linalg.eigh(cov).eigenvectors[:, -1]
        mu_hat = mu / mu.norm().clamp_min(1e-12)
        xi = xi - (xi @ mu_hat) * mu_hat
        xi = xi if float(xi @ diff) >= 0 else -xi
    else:
        raise InputError(f"unknown xi_init {kind!r}: expected one of {', '.join(XI_INITS)}")
    return (xi / xi.norm().clamp_min(1e-12)).float()


def topdown_tensors(model) -> dict:
    """A model's top-down module as ``fit_topdown`` returns it (TOAST-Lite: effective LoRA-merged weights)."""
    out = {"prompt": model.prompt.detach().float(), "top_down_transform": model.top_down_transform.detach().float()}
    for l, dec in enumerate(model.decoders):  # LoRALinear.weight is the merged weight
        out[f"decoders.{l}.linear.weight"] = dec.linear.weight.detach().float()
        out[f"decoders.{l}.linear2.weight"] = dec.linear2.weight.detach().float()
    return out


@torch.no_grad()
def stage1_diagnostics(model, images: torch.Tensor, tensors: Optional[dict] = None, *, mean=None, std=None,
                       td_gain: float = 1.0, batch_size: int = 64) -> dict:
    """Per-block measurements of a top-down module on (held-out) images; see the module docstring.

    Args:
        model: the ``toast`` model whose backbone runs the images.
        tensors: the top-down module (default: the model's own, :func:`topdown_tensors`).
        td_gain: the gain B_l was fitted with: ``r2_td`` compares td_l / td_gain with norm1(in_l) − β_l.
    Returns:
        ``{"layers": [{"layer", "r2_reconstruction", "r2_chain", "r2_td", "value_ratio"}, ...],
        "gate": {"mean", "open_fraction", "min", "max"}, "n_tokens", "n_images"}``. ``value_ratio`` is
        mean_i |W_v td_l,i| / mean_i |W_v norm1(in_l)_i| with the gate at 1 (multiply by a token's gate
        for what that token gets).
    """
    tensors = tensors or topdown_tensors(model)
    was_training = model.training
    model.eval()
    blocks = list(model.vit.blocks)
    L, C = len(blocks), model.vit.embed_dim
    dev = next(model.parameters()).device
    A = [tensors[f"decoders.{l}.linear.weight"].float().to(dev) for l in range(L)]
    B = [tensors[f"decoders.{l}.linear2.weight"].float().to(dev) for l in range(L)]
    P, xi = tensors["top_down_transform"].float().to(dev), tensors["prompt"].float().to(dev)
    rec = [Gram.empty(C, C, dev) for _ in blocks]
    chain_sse = torch.zeros(L, dtype=torch.float64)
    chain_stats = [Gram.empty(1, C, dev) for _ in blocks]  # y statistics of in_l, for SST
    td_sse = torch.zeros(L, dtype=torch.float64)
    td_stats = [Gram.empty(1, C, dev) for _ in blocks]
    vnum = torch.zeros(L, dtype=torch.float64)
    vden = torch.zeros(L, dtype=torch.float64)
    gates = []
    for x in _batches(images, batch_size):
        out = model.run_blocks(_as_float(x, mean, std).to(dev), collect_io=True)
        hs = _chain(out.tokens, A, P)
        gates.append(F.cosine_similarity(out.tokens, xi.view(1, 1, -1), dim=-1).clamp(0, 1).flatten())
        for l, (blk, (x_in, x_out)) in enumerate(zip(blocks, out.block_io)):
            rec[l].add(x_out, x_in)
            ones = torch.ones(*x_in.shape[:-1], 1, device=dev)
            chain_stats[l].add(ones, x_in)
            chain_sse[l] += float(((hs[l] - x_in) ** 2).sum())
            target = _norm1_target(blk, x_in)
            td = hs[l] @ B[l].T
            td_stats[l].add(ones, target)
            td_sse[l] += float(((td / td_gain - target) ** 2).sum())
            wv = blk.attn.qkv.weight[2 * blk.attn.attn_dim:]
            vnum[l] += float((td @ wv.T).norm(dim=-1).sum())
            vden[l] += float((blk.norm1(x_in) @ wv.T).norm(dim=-1).sum())
    model.train(was_training)

    def r2_from(sse, g):
        sst = g.yy - float((g.y_sum ** 2).sum()) / max(g.n, 1)
        return 1.0 - float(sse) / max(sst, 1e-30)

    layers = [{"layer": l + 1, "r2_reconstruction": rec[l].r2(A[l]), "r2_chain": r2_from(chain_sse[l], chain_stats[l]),
               "r2_td": r2_from(td_sse[l], td_stats[l]), "value_ratio": float(vnum[l] / vden[l].clamp_min(1e-30))}
              for l in range(L)]
    g = torch.cat(gates).cpu()
    return {"layers": layers, "gate": {"mean": float(g.mean()), "open_fraction": float((g > 0).float().mean()),
                                       "min": float(g.min()), "max": float(g.max())},
            "n_tokens": int(rec[0].n), "n_images": int(len(images))}


def diagnostics_markdown(diag: dict) -> str:
    """The per-layer diagnostics as a markdown table."""
    lines = ["| block | R² A_l·out_l → in_l | R² chain h_l → in_l | R² td_l / gain → norm1(in_l) − β | "
             "\\|W_v td_l\\| / \\|W_v norm1(in_l)\\| at gate 1 |", "|---:|---:|---:|---:|---:|"]
    for r in diag["layers"]:
        lines.append(f"| {r['layer']} | {r['r2_reconstruction']:.3f} | {r['r2_chain']:.3f} | {r['r2_td']:.3f} | "
                     f"{r['value_ratio']:.2f} |")
    g = diag["gate"]
    lines += ["", f"Gate s = clamp(cos(x, ξ), 0, 1) over {diag['n_tokens']:,} tokens of {diag['n_images']} images: "
                  f"mean {g['mean']:.3f}, open (s > 0) {100 * g['open_fraction']:.1f} %, range {g['min']:.3f}–{g['max']:.3f}."]
    return "\n".join(lines) + "\n"
