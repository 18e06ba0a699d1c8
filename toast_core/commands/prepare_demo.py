"""``prepare-demo``: default backbone, demo task, TOAST pre-tuning and all seven trained checkpoints
(cached ones are kept). Prints a results table at the end."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny plan for tests (about a minute on a CPU)")
    parser.add_argument("--plan", default=None, choices=("cpu", "gpu", "quick", "ship"),
                        help="recipe set (default: gpu on CUDA, else cpu; ship = retrain the checkpoints "
                             "shipped in assets/checkpoints)")
    parser.add_argument("--out", default=None, help="output directory (default: $TOAST_HOME/demo)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    parser.add_argument("--force", action="store_true", help="retrain even what is cached and valid")
    parser.add_argument("--methods", default=None, help="comma-separated subset of methods")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 = auto: all cores, or half of them when the machine is "
                             "already busy, where waiting threads slow every operation down)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import torch

    from ..demo import prepare_demo, results_markdown

    torch.set_num_threads(args.threads or auto_threads())
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    from ..demo import plan_for
    from ..train import resolve_device

    plan = plan_for(resolve_device(args.device), args.quick, args.plan) if args.plan else None
    results = prepare_demo(out_dir=args.out, quick=args.quick, device=args.device, force=args.force,
                           methods=methods, echo=True, tqdm_bars=not args.quiet, plan=plan)
    print()
    print(results_markdown(results))
    return 0


def auto_threads() -> int:
    """All cores on a quiet machine; half of them when the 1-minute load already fills most cores."""
    import os

    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return cores if load < 0.75 * cores else max(1, cores // 2)
