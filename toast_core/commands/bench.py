"""``bench``: what recording attention, TOAST and batch analysis cost, measured side by side in one run.

Examples::

    python -m toast_core bench --out bench_out                 # CPU, ViT-S/14 + ViT-B/16 (random weights)
    python -m toast_core bench --quick --out /tmp/b            # tiny models, seconds (used by the tests)
    python -m toast_core bench --device cuda --backbone vit_base_patch16_224 --batch 64 --peak-tflops 790
"""
from __future__ import annotations

import argparse
import shlex


def _ints(text: str) -> tuple:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..bench import SECTIONS

    parser.add_argument("--out", default="bench_out", help="folder for bench.json, bench.md, scaling.png")
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes, 1-2 repetitions (seconds)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                        help="precision (default: bf16 autocast on CUDA, fp32 on CPU)")
    parser.add_argument("--backbone", action="append", default=None,
                        help="timm ViT name, repeatable (default: vit_small_patch14_dinov2 and "
                             "vit_base_patch16_224, random weights); the first one is used for "
                             "analysis and scaling")
    parser.add_argument("--img-size", type=int, default=224, help="input side in px (default 224)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 8; --quick 2)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per variant (default 7)")
    parser.add_argument("--train-reps", type=int, default=None, help="for training steps (default 5)")
    parser.add_argument("--scaling-reps", type=int, default=None, help="for the scaling grid (default 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (default 1)")
    parser.add_argument("--sizes", type=_ints, default=None, help="scaling image sides, e.g. 224,336,448")
    parser.add_argument("--batches", type=_ints, default=None, help="scaling batch sizes, e.g. 1,8,32")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    parser.add_argument("--no-rss", action="store_true", help="skip the fresh-process RSS cross-check")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense peak TFLOP/s at this precision, for the share of peak")
    parser.add_argument("--peer-max-mib", type=int, default=None,
                        help="scaling: measure AttentionExtract only where its full matrices stay below this "
                             "(default 1024); above, report the analytic size")
    parser.add_argument("--profile", action="store_true",
                        help="record section: also profile plain forward and recording (torch.profiler)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", metavar="BENCH_JSON", default=None,
                        help="measure nothing: re-evaluate the targets of a saved bench.json and rewrite "
                             "bench.md (+ scaling.png) into --out")


def command_line(args) -> str:
    """The command that reproduces ``args`` (options that differ from the defaults, canonical order)."""
    defaults = vars(argparse.Namespace(**{a.dest: a.default for a in _parser()._actions if a.dest != "help"}))
    parts = ["python -m toast_core bench"]
    for key, value in vars(args).items():
        if key not in defaults or value == defaults[key]:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)) and key == "backbone":
            parts += [f"{flag} {shlex.quote(v)}" for v in value]
        elif isinstance(value, (list, tuple)):
            parts.append(f"{flag} {','.join(str(v) for v in value)}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    add_arguments(p)
    return p


def config_from_args(args) -> "object":
    """A :class:`toast_core.bench.BenchConfig` from parsed arguments."""
    from ..bench import BackboneSpec, BenchConfig

    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    over = {"device": args.device, "dtype": args.dtype, "sections": sections, "seed": args.seed,
            "peak_tflops": args.peak_tflops,
            "command": command_line(args)}
    for key in ("batch", "reps", "train_reps", "scaling_reps", "warmup", "sizes", "batches", "threads"):
        value = getattr(args, key)
        if value is not None:
            over[key] = value
    if args.no_rss:
        over["rss"] = False
    if args.profile:
        over["profile"] = True
    if args.peer_max_mib is not None:
        over["peer_max_bytes"] = int(args.peer_max_mib) * 2 ** 20
    if args.backbone and args.quick:  # the named architectures, shrunk to test size
        tiny = dict(patch_size=8, depth=2, embed_dim=32, num_heads=2)
        over["specs"] = tuple(BackboneSpec(name, 32, dict(tiny)) for name in args.backbone)
    elif args.backbone:
        over["specs"] = tuple(BackboneSpec(name, args.img_size) for name in args.backbone)
    elif args.img_size != 224 and not args.quick:
        from ..bench import DEFAULT_SPECS

        over["specs"] = tuple(BackboneSpec(s.name, args.img_size, s.kwargs) for s in DEFAULT_SPECS)
    if args.quick:
        return BenchConfig.quick_config(**over)
    return BenchConfig(**over)


def run(args) -> int:
    from ..bench import format_summary, run_benchmark, write_outputs

    if args.render:
        return render(args.render, args.out)
    cfg = config_from_args(args)
    cfg.validate()
    results = run_benchmark(cfg, log=lambda msg: print(msg, flush=True),
                            on_section=lambda partial: write_outputs(partial, args.out, plot=False))
    paths = write_outputs(results, args.out)
    print(format_summary(results))
    print(f"wrote {paths['json']}, {paths['markdown']}" + (f", {paths['plot']}" if paths["plot"] else ""))
    return 0


def render(path: str, out: str) -> int:
    """Rewrite the report of a saved run (targets re-evaluated with the current rules)."""
    import json

    from ..bench import evaluate_targets, format_summary, write_outputs
    from ..errors import InputError

    try:
        results = json.loads(open(path, encoding="utf-8").read())
        device_type = "cuda" if str(results["machine"]["device"]).startswith("cuda") else "cpu"
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read benchmark results from {path}: {e}") from None
    results["targets"] = evaluate_targets(results, device_type)
    paths = write_outputs(results, out)
    print(format_summary(results))
    print(f"wrote {paths['json']}, {paths['markdown']}" + (f", {paths['plot']}" if paths["plot"] else ""))
    return 0
