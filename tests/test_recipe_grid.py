"""The learning-rate rule of scripts/recipe_grid.py: seed 0 picks, contenders within MARGIN run more seeds."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("recipe_grid", Path(__file__).resolve().parents[1] / "scripts" / "recipe_grid.py")
rg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rg)


def row(lr, seed, val, test=0.5, method="toast"):
    return {"method": method, "lr": lr, "seed": seed, "val": val, "test": test, "seconds": 1.0, "epochs": 8}


def test_seed0_picks_then_contenders_decide_on_shared_seeds():
    rows = [row(0.01, 0, 0.745), row(0.03, 0, 0.795), row(0.1, 0, 0.800), row(0.3, 0, 0.325)]
    assert rg.contenders(rows) == {"toast": [0.03, 0.1]}  # 0.5 points behind: a contender; 0.01 is 5.5 behind
    assert rg.chosen(rows) == {"toast": 0.1}
    rows += [row(0.1, 1, 0.735), row(0.1, 2, 0.78)]
    assert rg.chosen(rows) == {"toast": 0.1}  # 0.03 has only seed 0: pending, the choice is 0.1 meanwhile
    assert rg.pending(rows) == {"toast": [0.03]} and "Pending: toast, chosen among the other contenders until 0.03 has" in rg.report(rows)
    rows += [row(0.03, 1, 0.80)]
    assert rg.shared_seeds(rows, "toast", [0.03, 0.1]) == [0, 1]
    assert rg.pending(rows) == {"toast": [0.03]}  # 0.1 has seed 2, 0.03 not yet
    assert rg.chosen(rows) == {"toast": 0.1}  # the choice waits for 0.03's seed 2 (it leads over seeds 0, 1)
    rows += [row(0.03, 2, 0.815)]
    assert rg.pending(rows) == {} and "Pending" not in rg.report(rows)
    assert rg.chosen(rows) == {"toast": 0.03}  # 80.3 % against 77.2 % over seeds 0, 1, 2


def test_a_late_contender_does_not_undo_a_choice_made_on_three_seeds():
    rows = [row(lr, s, v, method="lora") for lr, vals in ((0.0015, (0.99, 0.99, 1.0)), (0.005, (0.995, 0.99, 0.985)))
            for s, v in enumerate(vals)] + [row(0.015, 0, 0.07, method="lora")]
    assert rg.chosen(rows) == {"lora": 0.0015}
    rows.append(row(0.0005, 0, 0.985, method="lora"))  # exactly one point behind 99.5 %: a contender
    assert rg.contenders(rows) == {"lora": [0.0005, 0.0015, 0.005]}
    assert rg.pending(rows) == {"lora": [0.0005]} and rg.chosen(rows) == {"lora": 0.0015}


def test_ties_go_to_the_lower_rate_and_margin_counts_one_point():
    rows = [row(0.1, 0, 0.305, method="linear"), row(0.3, 0, 0.295, method="linear"),
            row(1.0, 0, 0.290, method="linear"), row(0.003, 0, 0.5, method="lora"), row(0.001, 0, 0.5, method="lora")]
    assert rg.contenders(rows) == {"linear": [0.1, 0.3], "lora": [0.001, 0.003]}
    assert rg.chosen(rows) == {"linear": 0.1, "lora": 0.001}
    text = rg.report(rows)
    assert "| lora | 0.001 | 0 | 50.0 % | 50.0 % | 50.0 | ✓ |" in text and "nan" not in text


def test_equal_means_tie_whatever_the_float_rounding():
    rows = [row(0.1, 0, 0.3), row(0.1, 1, 0.2), row(0.1, 2, 0.1), row(0.3, 0, 0.3), row(0.3, 1, 0.1), row(0.3, 2, 0.2)]
    assert sum([0.3, 0.1, 0.2]) > sum([0.3, 0.2, 0.1])  # the higher rate's mean is one ulp above in floats
    assert rg.chosen(rows) == {"toast": 0.1}
