"""Command line: ``python -m toast_core COMMAND ...``. Each command lives in its own module, which
defines ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when used."""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Add a command by adding a row.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("toast_core.commands.info", "list transfer methods and their trainable parameters"),
    "train": ("toast_core.commands.train", "train one method on your own dataset (ImageFolder layout)"),
    "train-all": ("toast_core.commands.train_all", "train several methods on your own folder or zip, one after another"),
    "pretune": ("toast_core.commands.pretune", "TOAST stage 1: pre-tune the top-down module on generic images"),
    "prepare-demo": ("toast_core.commands.prepare_demo", "default backbone, demo task and all seven trained checkpoints"),
    "bench": ("toast_core.commands.bench", "benchmark recording, TOAST and batch analysis against plain passes"),
    "analyze": ("toast_core.commands.analyze", "measure where attention lands on an annotated dataset (CSV, summary, plots)"),
    "figure": ("toast_core.commands.figure", "paper figure of methods x layers/images (PDF, SVG, PNG, zip bundle)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="python -m toast_core",
        description="Attention analysis of transfer learning on Vision Transformers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<14} {h}" for n, (_, h) in COMMANDS.items()) +
               "\n\nRun `python -m toast_core COMMAND --help` for a command's options.")
    top.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        top.parse_args(argv[:1] or ["--help"])
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"python -m toast_core {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    from .errors import ToastError

    try:
        return int(module.run(args) or 0)
    except ToastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
