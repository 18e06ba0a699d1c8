"""A/B of TOAST's folded feedback path: the same model, folded vs per-token, in one process.

The bench's TOAST section compares TOAST with a single pass; this script isolates what folding the
linear feedback path (``toast_core.methods.toast.feedback_operators``) saves, by switching
``fold_pays`` off for the per-token variant. Repetitions are interleaved (single, folded, per-token)
and timed in process CPU time with one torch thread; each ratio is the median of the per-repetition
ratios to the single pass.

    python scripts/bench_toast_fold.py --backbone vit_small_patch14_dinov2 --batch 8 --reps 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import toast_core.methods.toast as toast_module
from toast_core.bench import BackboneSpec, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="vit_small_patch14_dinov2")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = BackboneSpec(args.backbone, args.img_size)
    cpu = torch.device("cpu")
    toast, single = build("toast", spec, cpu), build("linear", spec, cpu)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
    fold_pays = toast_module.fold_pays

    def timed(model, fold=True) -> float:
        toast_module.fold_pays = fold_pays if fold else (lambda batch, tokens, dim: False)
        try:
            t = time.process_time()
            with torch.no_grad():
                model(x)
            return time.process_time() - t
        finally:
            toast_module.fold_pays = fold_pays

    for warm in (lambda: timed(single), lambda: timed(toast), lambda: timed(toast, fold=False)):
        warm()
    runs = []
    for i in range(args.reps):
        s, f, u = timed(single), timed(toast), timed(toast, fold=False)
        runs.append({"single_s": s, "folded_s": f, "per_token_s": u})
        print(f"rep {i}: single {s:.2f} s, folded {f:.2f} s, per-token {u:.2f} s", flush=True)
    out = {"backbone": spec.label(), "batch": args.batch, "fold_used": fold_pays(args.batch, *_tokens_dim(toast, x)),
           "folded_vs_single": statistics.median(r["folded_s"] / r["single_s"] for r in runs),
           "per_token_vs_single": statistics.median(r["per_token_s"] / r["single_s"] for r in runs),
           "folded_vs_per_token": statistics.median(r["folded_s"] / r["per_token_s"] for r in runs), "runs": runs}
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def _tokens_dim(model, x) -> tuple[int, int]:
    with torch.no_grad():
        tokens = model.run_blocks(x[:1]).tokens
    return tokens.shape[1], tokens.shape[2]


if __name__ == "__main__":
    main()
