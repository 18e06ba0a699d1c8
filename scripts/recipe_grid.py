"""Learning-rate grid and training seeds for the demo recipes (docs/RESULTS_TRAINING.md).

Every run trains one method with the CPU ship plan's data, input size and epochs (toast_core.demo), a
learning rate from the grid and a training seed, through ``prepare_demo`` itself (same trainer, same
stage 1), into ``OUT/<method>/lr<lr>-s<seed>/``. Runs already complete are skipped, so the grid can be
stopped and resumed. The grid is chosen on the validation split: the test split is only reported.

    python scripts/recipe_grid.py grid  --out /tmp/grid                 # every method x its grid, seed 0
    python scripts/recipe_grid.py seeds --out /tmp/grid --seeds 1 2     # the chosen lr at more seeds
    python scripts/recipe_grid.py report --out /tmp/grid                # markdown tables
    python scripts/recipe_grid.py adopt --out /tmp/grid --from ~/.cache/toast_core/ship224/demo  # seed 0 from a ship run

The base rate of a recipe scales every parameter group together (head, ξ, decoders keep their ratios).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toast_core.demo import SHIPPED_METHODS, plan_for, prepare_demo  # noqa: E402

#: multipliers of each recipe's own (chosen) rate: the 224-px grid of docs/RESULTS_TRAINING.md
GRID = {"linear": (0.03, 0.09, 0.3, 1.0, 3.0), "lora": (0.3, 1.0, 3.0), "vpt-shallow": (1.0,),
        "vpt-deep": (0.3, 1.0, 3.0), "toast": (0.1, 0.3, 1.0, 3.0), "toast-lite": (1 / 3, 1.0, 10 / 3),
        "finetune": (1.0,)}
HEADLINE = ("linear", "lora", "vpt-deep", "toast", "toast-lite")


def recipe_of(method: str):
    plan = plan_for(name="ship")
    for r in plan.recipes + plan_for(name="cpu").recipes:
        if r.method == method:
            return plan, r
    raise SystemExit(f"no recipe for {method}")


def run_dir(out: Path, method: str, lr: float, seed: int) -> Path:
    return out / method / f"lr{lr:.3g}-s{seed}"


def train_one(out: Path, method: str, lr: float, seed: int) -> dict:
    plan, r = recipe_of(method)
    d = run_dir(out, method, lr, seed)
    done = d / "results.json"
    if done.is_file():
        return json.loads(done.read_text())["methods"][method]
    plan = dataclasses.replace(plan, seed=seed, recipes=(dataclasses.replace(r, lr=lr),), shipped=())
    print(f"== {method} lr {lr:.3g} seed {seed} -> {d}", flush=True)
    res = prepare_demo(out_dir=d, device="cpu", plan=plan, methods=[method], echo=True)
    return res["methods"][method]


def adopt(out: Path, demo_dir: Path, methods) -> None:
    """Seed-0 rows from a finished ``prepare-demo`` / ``ship_224.py`` folder (same plan, recipes and seed 0),
    so that the grid and the seeds build on the shipped runs instead of training them again."""
    for m in methods:
        info = demo_dir / m / "config.json"
        if not info.is_file():
            continue
        d = json.loads(info.read_text())
        if not d.get("complete"):
            print(f"{m}: not complete in {demo_dir}, skipped")
            continue
        lr = float(d["recipe"]["lr"])
        row = {"test_acc": d["metrics"]["test_accuracy"], "val_acc": d["metrics"]["val_accuracy"],
               "train_seconds": d["train_seconds"], "epochs": d["epochs_done"], "lr": lr, "source": str(demo_dir / m)}
        dst = run_dir(out, m, lr, 0)
        dst.mkdir(parents=True, exist_ok=True)
        (dst / "results.json").write_text(json.dumps({"plan": d.get("demo_plan"), "image_size": d.get("img_size"),
                                                      "methods": {m: row}}, indent=1))
        print(f"{m}: seed 0 from {demo_dir / m} (lr {lr:.3g}, val {row['val_acc']:.3f})")


def collect(out: Path) -> list[dict]:
    rows = []
    for f in sorted(out.glob("*/lr*-s*/results.json")):
        res = json.loads(f.read_text())
        for m, r in res["methods"].items():
            lr, seed = f.parent.name[2:].rsplit("-s", 1)
            rows.append({"method": m, "lr": float(lr), "seed": int(seed), "val": r["val_acc"], "test": r["test_acc"],
                         "seconds": r["train_seconds"], "epochs": r["epochs"]})
    return rows


def chosen(rows: list[dict]) -> dict:
    """method -> lr with the best seed-0 validation accuracy (ties: the lower rate)."""
    best = {}
    for r in sorted(rows, key=lambda r: r["lr"]):
        if r["seed"] == 0 and (r["method"] not in best or r["val"] > best[r["method"]]["val"]):
            best[r["method"]] = r
    return {m: r["lr"] for m, r in best.items()}


def report(rows: list[dict]) -> str:
    win = chosen(rows)
    lines = ["| method | lr | epochs | val acc. (seed 0) | test acc. (seed 0) | chosen |", "|---|---:|---:|---:|---:|:-:|"]
    for r in sorted((r for r in rows if r["seed"] == 0), key=lambda r: (r["method"], r["lr"])):
        lines.append(f"| {r['method']} | {r['lr']:.3g} | {r['epochs']} | {100 * r['val']:.1f} % | "
                     f"{100 * r['test']:.1f} % | {'✓' if win.get(r['method']) == r['lr'] else ''} |")
    lines += ["", "| method | lr | seeds | test acc. mean ± sd | val acc. mean ± sd | per seed (test) |",
              "|---|---:|---|---:|---:|---|"]
    for m, lr in win.items():
        rs = sorted((r for r in rows if r["method"] == m and r["lr"] == lr), key=lambda r: r["seed"])
        t, v = np.array([r["test"] for r in rs]), np.array([r["val"] for r in rs])
        sd = lambda a: a.std(ddof=1) if len(a) > 1 else float("nan")  # noqa: E731
        lines.append(f"| {m} | {lr:.3g} | {', '.join(str(r['seed']) for r in rs)} | {100 * t.mean():.1f} ± "
                     f"{100 * sd(t):.1f} % | {100 * v.mean():.1f} ± {100 * sd(v):.1f} % | "
                     f"{', '.join(f'{100 * x:.1f}' for x in t)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["grid", "seeds", "report", "adopt"])
    ap.add_argument("--from", dest="source", default=None, help="adopt: a finished demo folder (seed 0)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", nargs="+", default=list(SHIPPED_METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--scales", nargs="+", type=float, default=None,
                    help="grid: multipliers of each recipe's rate to run (default: GRID; e.g. 10 to widen past an edge)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.what == "adopt":
        if not args.source:
            raise SystemExit("adopt needs --from DEMO_DIR")
        adopt(out, Path(args.source).expanduser(), args.methods)
    elif args.what == "grid":
        for m in args.methods:
            base = recipe_of(m)[1].lr
            for k in args.scales or GRID[m]:
                train_one(out, m, base * k, 0)
    elif args.what == "seeds":
        win = chosen(collect(out))
        for m in args.methods:
            if m in win:
                for s in args.seeds:
                    train_one(out, m, win[m], s)
    text = report(collect(out))
    print(text)
    (out / "report.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
