"""Learning-rate grid and training seeds for the demo recipes (docs/RESULTS_TRAINING.md).

Every run trains one method with the CPU ship plan's data, input size and epochs (toast_core.demo), a
learning rate from the grid and a training seed, through ``prepare_demo`` itself (same trainer, same
stage 1), into ``OUT/<method>/lr<lr>-s<seed>/``. Runs already complete are skipped, so the grid can be
stopped and resumed. The rate is chosen on the validation split (the test split is only reported): seed 0
picks, and every rate within MARGIN of seed 0's best runs the same seeds, whose mean decides.

    python scripts/recipe_grid.py grid  --out /tmp/grid                 # every method x its grid, seed 0
    python scripts/recipe_grid.py seeds --out /tmp/grid --seeds 1 2     # every contender rate at more seeds
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
GRID = {"linear": (0.03, 0.09, 0.3, 1.0, 3.0), "lora": (1 / 3, 1.0, 10 / 3, 10.0), "vpt-shallow": (1.0,),
        "vpt-deep": (0.3, 1.0, 3.0), "toast": (1 / 3, 1.0, 10 / 3, 10.0), "toast-lite": (1 / 3, 1.0, 10 / 3),
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


#: a rate within this much seed-0 validation accuracy of the method's best is a contender: it runs the same
#: seeds as the best, and the mean over the seeds they share decides (one validation image is 0.5 points)
MARGIN = 0.01


def contenders(rows: list[dict]) -> dict:
    """method -> the rates whose seed-0 validation accuracy is within MARGIN of the method's best."""
    seed0 = [r for r in rows if r["seed"] == 0]
    out = {}
    for m in sorted({r["method"] for r in seed0}):
        best = max(r["val"] for r in seed0 if r["method"] == m)
        out[m] = sorted(r["lr"] for r in seed0 if r["method"] == m and r["val"] >= best - MARGIN - 1e-9)
    return out


def seeds_run(rows: list[dict], method: str, lrs) -> dict:
    """lr -> the set of seeds ``method`` has run at that rate."""
    return {lr: {r["seed"] for r in rows if r["method"] == method and r["lr"] == lr} for lr in lrs}


def shared_seeds(rows: list[dict], method: str, lrs) -> list[int]:
    """The seeds every one of ``lrs`` has run for ``method``."""
    return sorted(set.intersection(*seeds_run(rows, method, lrs).values()))


def pending(rows: list[dict]) -> dict:
    """method -> the contender rates that lack seeds another contender has run (the choice waits on them)."""
    out = {}
    for m, lrs in contenders(rows).items():
        runs = seeds_run(rows, m, lrs)
        every = set().union(*runs.values())
        if short := [lr for lr in lrs if runs[lr] != every]:
            out[m] = short
    return out


def chosen(rows: list[dict]) -> dict:
    """method -> lr: among the contenders, the best mean validation accuracy over the seeds they share
    (ties: the lower rate). A contender that lacks another's seeds is pending: the choice is made among the
    others until it has them (with seed 0 alone, seed 0 decides)."""
    win, waiting = {}, pending(rows)
    for m, lrs in contenders(rows).items():
        ready = [lr for lr in lrs if lr not in waiting.get(m, ())] or lrs
        seeds = shared_seeds(rows, m, ready)

        def mean_val(lr):
            vals = [r["val"] for r in rows if r["method"] == m and r["lr"] == lr and r["seed"] in seeds]
            return round(float(np.mean(vals)), 9)  # equal means tie whatever order the floats were summed in
        win[m] = max(ready, key=lambda lr: (mean_val(lr), -lr))
    return win


def report(rows: list[dict]) -> str:
    win, cont = chosen(rows), contenders(rows)
    lines = ["| method | lr | epochs | val acc. (seed 0) | test acc. (seed 0) | contender | chosen |",
             "|---|---:|---:|---:|---:|:-:|:-:|"]
    for r in sorted((r for r in rows if r["seed"] == 0), key=lambda r: (r["method"], r["lr"])):
        lines.append(f"| {r['method']} | {r['lr']:.3g} | {r['epochs']} | {100 * r['val']:.1f} % | "
                     f"{100 * r['test']:.1f} % | {'·' if r['lr'] in cont[r['method']] else ''} | "
                     f"{'✓' if win.get(r['method']) == r['lr'] else ''} |")
    lines += ["", f"Contenders: within {100 * MARGIN:.0f} point of the best seed-0 validation accuracy; the best mean "
              "validation accuracy over the seeds they share is chosen."]
    lines += [f"Pending: {m}, chosen among the other contenders until {', '.join(f'{lr:.3g}' for lr in lrs)} "
              f"has their seeds (`seeds --methods {m}`)." for m, lrs in pending(rows).items()]
    lines += ["",
              "| method | lr | seeds | test acc. mean ± sd | val acc. mean ± sd | per seed (test) | chosen |",
              "|---|---:|---|---:|---:|---|:-:|"]

    def pm(a):  # mean ± sample sd; one seed has no spread
        return f"{100 * a.mean():.1f} ± {100 * a.std(ddof=1):.1f} %" if len(a) > 1 else f"{100 * a.mean():.1f} %"
    for m, lrs in cont.items():
        for lr in lrs:
            rs = sorted((r for r in rows if r["method"] == m and r["lr"] == lr), key=lambda r: r["seed"])
            t, v = np.array([r["test"] for r in rs]), np.array([r["val"] for r in rs])
            lines.append(f"| {m} | {lr:.3g} | {', '.join(str(r['seed']) for r in rs)} | {pm(t)} | {pm(v)} | "
                         f"{', '.join(f'{100 * x:.1f}' for x in t)} | {'✓' if win[m] == lr else ''} |")
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
    if args.what == "report" and not collect(out):
        raise SystemExit(f"no finished runs under {out}")
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
        cont = contenders(collect(out))
        for m in args.methods:
            for lr in cont.get(m, ()):  # every contender runs the same seeds; report() then picks on their mean
                for s in args.seeds:
                    train_one(out, m, lr, s)
    text = report(collect(out))
    print(text)
    (out / "report.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
