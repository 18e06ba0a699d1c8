"""Recording for Compare: query rows beside fused attention vs full attention matrices (issue 17).

Compare's recordings keep only the prefix tokens' query rows unless rollout is asked for (then full
matrices, head-averaged). This measures both ways of ``toast_core.compare.recordings._run`` on one image
for each method, interleaved, median wall and CPU time over ``--reps`` (untrained weights: timing only).

    python scripts/bench_recording_rows.py --size 224 --reps 7 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["linear", "lora", "vpt-deep", "toast"])
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    import toast_core as tc
    from toast_core.compare.entries import ModelEntry
    from toast_core.compare.recordings import _run

    torch.set_num_threads(args.threads)
    image = Image.fromarray((np.random.default_rng(0).random((args.size, args.size, 3)) * 255).astype("uint8"))
    print(f"| method | rows: wall ms | full: wall ms | rows: CPU ms | full: CPU ms | full ÷ rows (CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in args.methods:
        model = tc.build_model(m, num_classes=12, img_size=args.size).eval()
        entry = ModelEntry(key=f"bench:{m}", name=m, method=m, model=model, source="bench", trained=False)
        t = {False: [], True: []}
        c = {False: [], True: []}
        for r in range(args.reps + 1):
            for full in (False, True):
                w0, c0 = time.perf_counter(), time.process_time()
                _run(entry, image, 1.0, None, full)
                if r:  # the first round warms up
                    t[full].append(1e3 * (time.perf_counter() - w0))
                    c[full].append(1e3 * (time.process_time() - c0))
        med = {k: statistics.median(v) for k, v in t.items()}
        cmed = {k: statistics.median(v) for k, v in c.items()}
        print(f"| {m} | {med[False]:.0f} | {med[True]:.0f} | {cmed[False]:.0f} | {cmed[True]:.0f} | "
              f"{cmed[True] / cmed[False]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
