"""∂L/∂s: which way the task loss pulls TOAST's token-selection gate, per image region.

TOAST's gate s_i = clamp(cos(x_i, ξ), 0, 1) scales each bottom-up output token before the feedback path
(x̃_i = s_i·x_i). The gradient of the task loss with respect to s_i is ⟨∂L/∂x̃_i, x_i⟩: negative where
opening the gate further on token i would lower the loss. This script measures it on a demo-task split
with its exact masks and averages it per region (patches mostly on the target, on distractors, on
background), with the gate's own mean per region. Per-image losses are summed (each image's gradient is
its own; nothing is divided by the batch size).

    python scripts/gate_gradient.py CHECKPOINT --data TASK_DIR [--split val] [--images 200] [--json OUT]

Used for docs/RESULTS_TRAINING.md ("Why the gate does not single out the red object").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toast_core.analysis.datasets import load_dataset  # noqa: E402
from toast_core.analysis.metrics import mask_coverage  # noqa: E402
from toast_core.io.checkpoints import load_checkpoint  # noqa: E402

REGIONS = ("target", "distractors", "background")


def gate_gradients(model, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂s, s) per patch token, each (B, N_patches), for a batch; L = Σ_images cross-entropy."""
    seen = {}
    gated_fn = model._gated

    def keep(tokens, xi, grid):
        out = gated_fn(tokens, xi, grid)
        out.retain_grad()
        seen["x"], seen["gated"] = tokens, out
        return out

    model._gated = keep
    try:
        with torch.enable_grad():
            logits = model(images)
            F.cross_entropy(logits, labels, reduction="sum").backward()
    finally:
        del model._gated  # back to the class's method
    x, g = seen["x"], seen["gated"]
    p = model.num_prefix_tokens
    grad_s = (g.grad * x).sum(-1)[:, p:]
    s = (g.detach().norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12))[:, p:]
    return grad_s.detach(), s


def region_of(target_mask, distractor_mask, grid, threshold: float = 0.5) -> np.ndarray:
    """Per patch: 0 target, 1 distractors, 2 background, -1 mixed (covered, but under ``threshold``)."""
    ct = mask_coverage(np.asarray(target_mask, bool), grid)
    cd = mask_coverage(np.asarray(distractor_mask, bool) & ~np.asarray(target_mask, bool), grid)
    r = np.full(grid, -1)
    r[ct >= threshold] = 0
    r[cd >= threshold] = 1
    r[(ct == 0) & (cd == 0)] = 2
    return r.reshape(-1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True, help="a demo-task directory (manifest.json)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    model = load_checkpoint(args.checkpoint)
    if not getattr(model, "has_top_down", False):
        raise SystemExit(f"{args.checkpoint} is not a TOAST checkpoint")
    model.prompt.requires_grad_(True)
    ds = load_dataset(args.data, args.split, model=model, max_images=args.images)
    sums = {r: [0.0, 0.0, 0] for r in REGIONS}  # Σ ∂L/∂s, Σ s, patch count
    per_image = {r: [] for r in REGIONS}  # Σ over the image's patches of the region
    for start in range(0, len(ds), args.batch_size):
        items = [ds[i] for i in range(start, min(start + args.batch_size, len(ds)))]
        x = torch.stack([it["image"] for it in items])
        y = torch.tensor([int(it["label"]) for it in items])
        grad_s, s = gate_gradients(model, x, y)
        h = w = int(round(grad_s.shape[1] ** 0.5))
        for b, it in enumerate(items):
            reg = region_of(it["target_mask"], it["distractor_mask"], (h, w))
            for k, name in enumerate(REGIONS):
                sel = torch.from_numpy(reg == k)
                sums[name][0] += float(grad_s[b][sel].sum())
                sums[name][1] += float(s[b][sel].sum())
                sums[name][2] += int(sel.sum())
                per_image[name].append(float(grad_s[b][sel].sum()))
        print(f"{min(start + args.batch_size, len(ds))}/{len(ds)} images", flush=True)
    n = len(ds)
    out = {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split, "images": n,
           "grid": [h, w], "regions": {}}
    for name in REGIONS:
        g, sv, c = sums[name]
        out["regions"][name] = {"dL_ds_per_patch": g / max(c, 1), "gate_mean": sv / max(c, 1),
                                "patches_per_image": c / n, "dL_ds_summed_per_image": float(np.mean(per_image[name]))}
    print("| region | ∂L/∂s per patch | gate s (mean) | patches per image | summed pull per image |")
    print("|---|---:|---:|---:|---:|")
    for name, r in out["regions"].items():
        print(f"| {name} | {r['dL_ds_per_patch']:+.4f} | {r['gate_mean']:.3f} | {r['patches_per_image']:.1f} | "
              f"{r['dL_ds_summed_per_image']:+.3f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
