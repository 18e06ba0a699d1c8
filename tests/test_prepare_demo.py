"""``prepare-demo --quick`` end to end: real default backbone, generated task, TOAST pre-tuning, seven
trained checkpoints, results table; a second run keeps everything cached."""
from __future__ import annotations

import json

import pytest
import torch

from toast_core.checkpoints import load_checkpoint, read_checkpoint_info
from toast_core.demo import TensorImageDataset, demo_checkpoint_paths, demo_dir, load_task_split, plan_for
from toast_core.train import evaluate

METHODS = ["linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_prepare_demo_quick_end_to_end_then_cached(capsys):
    from toast_core.cli import main
    from toast_core.demo import prepare_demo

    fractions = []
    results = prepare_demo(quick=True, device="cpu", force=True, progress=lambda f, text: fractions.append(f))
    assert set(results["methods"]) == set(METHODS)
    assert fractions and fractions[-1] == 1.0 and all(0 <= f <= 1 for f in fractions)
    assert all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:]))  # the bar never goes back
    out = demo_dir(quick=True)
    assert (out / "results.json").is_file()
    table = (out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in METHODS)

    shares = {m: r["share"] for m, r in results["methods"].items()}
    assert shares["finetune"] == 1.0 and shares["linear"] < shares["vpt-deep"] < shares["toast"] < 0.2
    for m, r in results["methods"].items():
        assert 0.0 <= r["test_acc"] <= 1.0 and r["test_n"] == 12 and not r["cached"]
        info = read_checkpoint_info(r["checkpoint"])
        assert info["complete"] and info["classes"] and info["data"]["image_size"] == 56
        if m != "finetune":  # frozen backbone: only the method's own tensors are saved
            assert info["saved"] == "partial" and r["file_size"] < 20e6, (m, r["file_size"])
    assert results["methods"]["linear"]["file_size"] < 50_000
    toast_info = read_checkpoint_info(results["methods"]["toast"]["checkpoint"])
    assert toast_info["pretuned_from"]["path"].endswith("pretune/model.safetensors")
    assert read_checkpoint_info(out / "pretune")["stage"] == "pretune"

    # A reloaded checkpoint reproduces the recorded test accuracy.
    plan = plan_for("cpu", quick=True)
    model = load_checkpoint(results["methods"]["toast-lite"]["checkpoint"])
    x, y = load_task_split(results["task_dir"], "test", plan.image_size)
    dc = read_checkpoint_info(results["methods"]["toast-lite"]["checkpoint"])["data"]
    acc = evaluate(model, TensorImageDataset(x, y, dc["mean"], dc["std"]), batch_size=12)["accuracy"]
    assert acc == pytest.approx(results["methods"]["toast-lite"]["test_acc"])

    # Second run through the command line: everything is cached, nothing is rewritten.
    mtimes = {m: (out / m / "model.safetensors").stat().st_mtime_ns for m in METHODS}
    assert main(["prepare-demo", "--quick", "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "(cached)" in printed and "| toast-lite |" in printed
    again = json.loads((out / "results.json").read_text())
    assert all(r["cached"] for r in again["methods"].values()) and again["pretune"]["cached"]
    assert {m: (out / m / "model.safetensors").stat().st_mtime_ns for m in METHODS} == mtimes
    assert set(demo_checkpoint_paths(quick=True)) == set(METHODS)
