"""Copy the checkpoints trained by ``prepare-demo --plan ship`` into ``assets/checkpoints`` (float16),
and the TOAST stage-1 checkpoint it fitted into ``assets/toast_stage1``.

    python -m toast_core prepare-demo --plan ship --out /tmp/ship/demo
    python scripts/ship_checkpoints.py /tmp/ship/demo

Checks the repository's size rules (no file over 10 MB, ``assets/`` under 25 MB) before finishing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toast_core.demo import SHIPPED_METHODS  # noqa: E402
from toast_core.demo.shipped import SHIPPED_DIR, STAGE1_DIR, export_for_shipping  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo_dir", help="output folder of prepare-demo --plan ship")
    ap.add_argument("--methods", nargs="+", default=list(SHIPPED_METHODS), choices=SHIPPED_METHODS,
                    help="ship only these (default: all six)")
    args = ap.parse_args(argv)
    src = Path(args.demo_dir)
    jobs = [(m, src / m, SHIPPED_DIR / m) for m in args.methods]
    if (src / "pretune" / "model.safetensors").is_file():
        jobs.append(("toast stage 1", src / "pretune", STAGE1_DIR))
    for m, run_dir, dst in jobs:
        path = export_for_shipping(run_dir, dst)
        size = path.stat().st_size
        print(f"{m}: {size / 1e6:.2f} MB -> {path.relative_to(ROOT)}")
        if size > 10e6:
            raise SystemExit(f"{path} is over 10 MB")
    total = sum(p.stat().st_size for p in (ROOT / "assets").rglob("*") if p.is_file())
    print(f"assets/ total {total / 1e6:.1f} MB")
    if total > 25e6:
        raise SystemExit("assets/ is over 25 MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
