"""Train the six shipped checkpoints at 224 px (16x16 patches), resumably (issue 17).

The ``ship`` plan (224 px since issue 17; ``--image-size 112`` retrains the earlier 8x8-map checkpoints
with the same data, epochs, recipes and seed), one method after another, TOAST first. Every method
saves its training state after each epoch and ``prepare_demo`` resumes it, so the script can be stopped
(Ctrl-C / SIGTERM / a session ending) and started again with the same arguments. Complete methods are
kept (same demo hash), so a rerun only reports them.

    python scripts/ship_224.py --out ~/.cache/toast_core/ship224/demo            # CPU: hours on 2 cores
    python scripts/ship_224.py --out /tmp/ship224/demo --device cuda             # minutes on one GPU
    python scripts/ship_checkpoints.py ~/.cache/toast_core/ship224/demo         # once all six are complete

Measured on the shared 2-core CPU (docs/RESULTS_TRAINING.md): stage 1 at 224 px in ~5 min (held-out
R² >= 0.861 on every block); on a quiet machine 120-180 s per epoch for TOAST, TOAST-Lite, LoRA and VPT
(about 20 min per method), about a minute for the linear probe.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ORDER = ("toast", "linear", "lora", "vpt-deep", "toast-lite", "vpt-shallow")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(os.path.expanduser("~/.cache/toast_core/ship224/demo"))))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--methods", nargs="+", default=list(ORDER), choices=ORDER)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = ap.parse_args(argv)

    import torch

    from toast_core.demo import plan_for, prepare_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    plan = dataclasses.replace(plan_for(name="ship"), image_size=args.image_size)
    for m in args.methods:
        res = prepare_demo(out_dir=args.out, device=args.device, plan=plan, methods=[m], echo=True)
        r = res["methods"].get(m, {})
        print(f"RESULT {m}: test {r.get('test_acc')}, val {r.get('val_acc')}, {r.get('train_seconds')} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
