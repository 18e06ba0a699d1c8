"""``prepare-demo``: default backbone, demo task, TOAST pre-tuning and all seven trained checkpoints
(cached ones are kept). Prints a results table at the end.

``--background`` (the app's first start): the backbone, the task and the shipped checkpoints now, then
the rest trains in a background process (:mod:`toast_core.demo.background`) and the command returns."""
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
    parser.add_argument("--background", action="store_true",
                        help="install what ships ready (backbone, task, shipped checkpoints), then train the "
                             "rest in a background process at lower CPU priority and return at once")


def run(args) -> int:
    import torch

    from ..demo import prepare_demo, results_markdown

    torch.set_num_threads(args.threads or auto_threads())
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    from ..demo import plan_for
    from ..device import resolve_device

    plan = plan_for(resolve_device(args.device), args.quick, args.plan) if args.plan else None
    if args.background:
        return _background(args, plan)
    results = prepare_demo(out_dir=args.out, quick=args.quick, device=args.device, force=args.force,
                           methods=methods, echo=True, tqdm_bars=not args.quiet, plan=plan)
    print()
    print(results_markdown(results))
    return 0


def _background(args, plan) -> int:
    import time

    from ..demo import background
    from ..demo import prepare_demo

    if args.force or args.methods or args.plan:
        print("--background takes the default plan: --force, --methods and --plan are for the foreground run")
        return 2
    t0 = time.perf_counter()
    if background.is_running(background._out(args.out, args.quick)):
        print("prepare-demo: a background training is already running; not starting a second one")
    else:
        prepare_demo(out_dir=args.out, quick=args.quick, device=args.device, echo=True, tqdm_bars=not args.quiet,
                     only_shipped=True)
    ready = time.perf_counter() - t0
    started = background.start(quick=args.quick, device=args.device, out=args.out)
    if started["started"]:
        print(f"prepare-demo: ready to open the app after {ready:.0f} s; training {', '.join(started['methods'])} "
              f"in the background (pid {started['pid']}, log {started['log']}). The app shows its progress and "
              "adds each model when its checkpoint is complete.", flush=True)
    elif started["reason"] == "already running":
        print(f"prepare-demo: background training already running (pid {started['pid']}): "
              f"{', '.join(started['methods'])}; log {started['log']}", flush=True)
    else:
        print(f"prepare-demo: every demo checkpoint is in place ({ready:.0f} s)", flush=True)
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
