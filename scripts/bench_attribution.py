"""Cost of each map kind: its time ÷ one plain forward of the same model, in one process.

Per method, the repetitions are interleaved (plain forward, then every kind) and timed in process CPU
time (one torch thread) and wall-clock time; each ratio is the median of the per-repetition ratios to
that repetition's plain forward (``model(x)`` under ``no_grad``: for TOAST both passes). ``cls`` is the
attention recorder (all layers' CLS rows), for scale. Random weights: the cost does not depend on them.

    python scripts/bench_attribution.py --backbone vit_small_patch14_dinov2 --batch 4 --reps 3 \\
        --json docs/benchmarks/attribution/cpu_vit_s14.json
    python scripts/bench_attribution.py --device cuda --batch 32 --reps 5 --json ...   # where a GPU is lent
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from toast_core import maps
from toast_core.bench import BackboneSpec, build

KINDS = ("cls", "gae", "legrad", "gradcam", "attnlrp")


def _timed(fn, device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    c, w = time.process_time(), time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.process_time() - c, time.perf_counter() - w


def bench_method(method: str, spec: BackboneSpec, x: torch.Tensor, reps: int, device: torch.device) -> dict:
    model = build(method, spec, device)

    def plain():
        with torch.no_grad():
            model(x)

    jobs = {"forward": plain, **{k: (lambda k=k: maps.maps_for(model, x, k)) for k in KINDS}}
    for fn in jobs.values():  # warm-up
        fn()
    runs = []
    for i in range(reps):
        runs.append({name: _timed(fn, device) for name, fn in jobs.items()})
        line = ", ".join(f"{n} {t[0]:.2f}s" for n, t in runs[-1].items())
        print(f"{method} rep {i}: {line}", flush=True)
    out = {"forward_cpu_s": statistics.median(r["forward"][0] for r in runs),
           "forward_wall_s": statistics.median(r["forward"][1] for r in runs)}
    for k in KINDS:
        out[k] = {"cpu_ratio": statistics.median(r[k][0] / r["forward"][0] for r in runs),
                  "wall_ratio": statistics.median(r[k][1] / r["forward"][1] for r in runs)}
    out["runs"] = runs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="vit_small_patch14_dinov2")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--methods", default="linear,vpt-deep,toast")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = BackboneSpec(args.backbone, args.img_size)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0)).to(device)
    result = {"backbone": spec.label(), "batch": args.batch, "device": str(device), "threads": args.threads,
              "machine": platform.processor() or platform.machine(),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "methods": {m: bench_method(m, spec, x, args.reps, device) for m in args.methods.split(",")}}
    for m, r in result["methods"].items():
        print(m, " ".join(f"{k}={r[k]['cpu_ratio']:.2f}x(cpu)/{r[k]['wall_ratio']:.2f}x(wall)" for k in KINDS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
