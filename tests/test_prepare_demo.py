"""``prepare-demo --quick`` end to end: real default backbone, generated task, TOAST pre-tuning, seven
trained checkpoints, results table; a second run keeps everything cached."""
from __future__ import annotations

import json

import pytest
import torch

from toast_core.io.checkpoints import load_checkpoint, read_checkpoint_info
from toast_core.demo import TensorImageDataset, demo_checkpoint_paths, demo_dir, load_task_split, plan_for
from toast_core.training.trainer import evaluate

METHODS = ["linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_shipped_checkpoints_are_installed_when_they_fit_and_trained_when_not(tmp_path, monkeypatch):
    """A plan with ``shipped`` methods installs the repository's float16 checkpoints (no pre-tuning,
    no training) when they were trained on this backbone and task, and trains a method itself when its
    shipped checkpoint was trained on another task."""
    import dataclasses

    from toast_core.demo import shipped
    from toast_core.demo import prepare_demo

    base = prepare_demo(quick=True, device="cpu")  # cached by the test above (or built here)
    ship_dir = tmp_path / "ship"
    for m in ("lora", "toast"):
        shipped.export_for_shipping(demo_dir(quick=True) / m, ship_dir / m)
    # vpt-deep: a checkpoint of another task version must not be used
    shipped.export_for_shipping(demo_dir(quick=True) / "vpt-deep", ship_dir / "vpt-deep")
    tensors, cfg = shipped._read(ship_dir / "vpt-deep")
    cfg["data"]["manifest_sha256"] = "0" * 64
    shipped._write(tensors, cfg, ship_dir / "vpt-deep")
    monkeypatch.setenv("TOAST_SHIPPED_DIR", str(ship_dir))

    lora_info = read_checkpoint_info(ship_dir / "lora")
    assert lora_info["data"]["dataset"] is None and lora_info["shipped_dtype"] == "float16"
    plan = dataclasses.replace(plan_for("cpu", quick=True), shipped=("lora", "toast", "vpt-deep"))
    out = tmp_path / "demo"
    res = prepare_demo(out_dir=out, device="cpu", plan=plan, methods=["lora", "toast", "vpt-deep"])
    assert res["methods"]["lora"]["source"] == "shipped" and res["methods"]["toast"]["source"] == "shipped"
    assert res["methods"]["vpt-deep"]["source"] == "trained"
    assert "pretune" not in res  # both TOAST-family checkpoints came shipped: no stage 1 here
    for m in ("lora", "toast"):
        assert res["methods"][m]["test_acc"] == base["methods"][m]["test_acc"]
        info = read_checkpoint_info(out / m)
        assert info["data"]["dataset"] == res["task_dir"] and info["installed_from"] == f"assets/checkpoints/{m}"
    # the installed float16 checkpoint loads and agrees with the float32 original on the test split
    x, y = load_task_split(res["task_dir"], "test", plan.image_size)
    dc = read_checkpoint_info(out / "toast")["data"]
    data = TensorImageDataset(x, y, dc["mean"], dc["std"])
    a = evaluate(load_checkpoint(out / "toast"), data, batch_size=12)["accuracy"]
    b = evaluate(load_checkpoint(demo_dir(quick=True) / "toast"), data, batch_size=12)["accuracy"]
    assert abs(a - b) <= 1 / len(y) + 1e-9
    # a second run keeps them
    again = prepare_demo(out_dir=out, device="cpu", plan=plan, methods=["lora", "toast", "vpt-deep"])
    assert all(r["cached"] for r in again["methods"].values())


def test_checkpoints_of_another_input_size_are_set_aside_not_mixed(tmp_path):
    """After an upgrade of the plans' input size, a complete checkpoint trained at the old size leaves
    the comparison (moved to previous/, kept) and counts as missing for the background trainer; one at
    the plan's size stays."""
    from toast_core.demo import prepare_demo
    from toast_core.demo.background import pending_methods
    from toast_core.demo.prepare import set_aside_other_sizes

    plan = plan_for("cpu", quick=True)
    src = demo_dir(quick=True)
    if not (src / "linear" / "config.json").is_file():
        prepare_demo(quick=True, device="cpu", methods=["linear"])
    from safetensors.torch import load_file

    from toast_core.io.checkpoints import write_checkpoint_files

    out = tmp_path / "demo"
    tensors = load_file(src / "linear" / "model.safetensors")
    for m, size in (("linear", plan.image_size), ("lora", 112)):  # lora: a stand-in trained at 112 px
        cfg = read_checkpoint_info(src / "linear")
        cfg["data"]["image_size"] = size
        write_checkpoint_files(tensors, cfg, out / m)
    moved = set_aside_other_sizes(out, plan.image_size, ["linear", "lora", "toast"])
    assert [p.name.split("-")[0] for p in moved] == ["lora"] and moved[0].parent == out / "previous"
    assert "112px" in moved[0].name and (moved[0] / "model.safetensors").is_file()  # kept, not deleted
    assert (out / "linear" / "config.json").is_file() and not (out / "lora").exists()
    pending = pending_methods(out, quick=True, device="cpu")
    assert "lora" in pending and "linear" not in pending
    assert set_aside_other_sizes(out, plan.image_size, ["linear", "lora"]) == []  # nothing left to move
