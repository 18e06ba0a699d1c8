"""Benchmark: Compare's model work for one new image, the trained default models (``$TOAST_HOME/demo``):
models one at a time or side by side (``workers``), with or without the shared frozen pass (``share``).

    TOAST_HOME=... python scripts/bench_record_all.py [--reps 7] [--threads 1] [--json out.json]

The four settings are interleaved per repetition (each on a new random 640x480 image, recordings cleared),
so their ratios come from one run on one machine. Also checks that sharing changes no recording.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toast_core import compare as cmp  # noqa: E402
from toast_core.bench.timing import machine_info  # noqa: E402
from toast_core.demo import demo_checkpoint_paths  # noqa: E402

SETTINGS = ((1, False), (1, True), (2, False), (2, True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per forward (the app: 1)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = demo_checkpoint_paths()
    if not paths:
        raise SystemExit("no demo checkpoints: run `python -m toast_core prepare-demo` first")
    entries = cmp.unique_names([cmp.load_entry(f"ckpt:{p}") for p in paths.values()])
    image = lambda i: Image.fromarray(np.random.default_rng(i).integers(0, 256, (480, 640, 3), dtype=np.uint8))  # noqa: E731
    times = {s: [] for s in SETTINGS}
    for r in range(args.reps + 1):  # repetition 0 warms up
        for workers, share in SETTINGS:
            cmp.RECORDINGS.clear()
            im = image(1000 + r)
            t0 = time.perf_counter()
            cmp.record_all(entries, im, workers=workers, share=share)
            if r:
                times[(workers, share)].append(time.perf_counter() - t0)
    cmp.RECORDINGS.clear()
    a = cmp.record_all(entries, image(7), workers=1, share=False)
    cmp.RECORDINGS.clear()
    b = cmp.record_all(entries, image(7), workers=2, share=True)
    diff = max(float((x.result.cls[p] - y.result.cls[p]).abs().max()) for x, y in zip(a, b) for p in x.passes)
    base = statistics.median(times[(1, False)])
    rows = [{"workers": w, "share": s, "median_s": statistics.median(v), "times_s": v,
             "speedup_vs_one_by_one": base / statistics.median(v)} for (w, s), v in times.items()]
    out = {"models": [e.name for e in entries], "input": list(entries[0].model.vit.patch_embed.img_size),
           "threads": args.threads, "reps": args.reps, "rows": rows, "max_abs_cls_difference_shared": diff,
           "machine": machine_info(torch.device("cpu"))}
    print("| models run | shared frozen pass | median s | speed-up |\n|---|---|---:|---:|")
    for r in rows:
        print(f"| {'side by side (' + str(r['workers']) + ' workers)' if r['workers'] > 1 else 'one at a time'} | "
              f"{'yes' if r['share'] else 'no'} | {r['median_s']:.3f} | {r['speedup_vs_one_by_one']:.2f}× |")
    print(f"largest |difference| of a CLS map, shared vs not: {diff}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
