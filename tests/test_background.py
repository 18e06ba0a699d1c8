"""Background training of the demo checkpoints (toast_core.demo.background, issue 13): one trainer at a
time (a lock), a stopped trainer resumes where it stopped, the status and time-left estimate, and
``prepare-demo --background`` on the real CPU plan (backbone, task, six shipped checkpoints in the
foreground; full fine-tuning starts in the background).

The trainers are real processes running the quick plan (or, for the CLI test, the real CPU plan, stopped
after it starts)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from toast_core.demo import background as bg

SIX = ["linear", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite"]
ROOT = Path(__file__).resolve().parent.parent


def quick_six(out: Path) -> Path:
    """``out`` holding the quick plan's six parameter-efficient checkpoints (+ pre-tuning), without
    full fine-tuning: the state after the app's foreground start."""
    from toast_core.demo import demo_dir, prepare_demo

    prepare_demo(quick=True, device="cpu")  # cached after the first test that needs it
    src = demo_dir(quick=True)
    out.mkdir(parents=True, exist_ok=True)
    for name in SIX + ["pretune"]:
        shutil.copytree(src / name, out / name, ignore=shutil.ignore_patterns("last.safetensors", ".*"))
    return out


def wait_for(cond, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} within {timeout:.0f} s")


def test_one_trainer_at_a_time_and_a_stopped_one_resumes(tmp_path):
    from toast_core.io.checkpoints import is_complete_checkpoint

    out = quick_six(tmp_path / "demo-quick")
    assert bg.pending_methods(out, quick=True, device="cpu") == ["finetune"]
    assert not bg.is_running(out) and bg.read_status(out) is None

    first = bg.start(quick=True, device="cpu", out=out)
    assert first["started"] and first["methods"] == ["finetune"]
    status = wait_for(lambda: (s := bg.read_status(out)) and s.get("pid") and s, 60, "the trainer did not report")
    assert status["pid"] == first["pid"] and status["running"]
    # a second start (the app restarted) finds the lock held: no second trainer
    second = bg.start(quick=True, device="cpu", out=out)
    assert not second["started"] and second["reason"] == "already running" and second["pid"] == first["pid"]
    # the trainer is niced
    nice = int(Path(f"/proc/{first['pid']}/stat").read_text().rsplit(")", 1)[1].split()[16])
    assert nice >= bg.NICE
    # SIGTERM before its first step ends: it saves the training state after that step and exits
    os.kill(first["pid"], signal.SIGTERM)
    wait_for(lambda: not bg.is_running(out), 300, "the trainer did not exit after SIGTERM")
    stopped = bg.read_status(out)
    assert stopped["state"] == "stopped", stopped
    assert (out / "finetune" / "last.safetensors").is_file()
    assert not is_complete_checkpoint(out / "finetune")
    steps_before = stopped["step"]
    assert 1 <= steps_before < stopped["total"] or stopped["total"] is None

    again = bg.start(quick=True, device="cpu", out=out)
    assert again["started"] and again["pid"] != first["pid"]
    wait_for(lambda: not bg.is_running(out) and bg.read_status(out)["state"] != "starting", 600,
             "the resumed trainer did not finish")
    done = bg.read_status(out)
    assert done["state"] == "done", (done, (out / bg.LOG_NAME).read_text()[-3000:])
    assert done.get("resumed_at_step") == steps_before, done  # resumed, not restarted
    log = (out / bg.LOG_NAME).read_text()
    assert f"resumed from {out / 'finetune' / 'last.safetensors'}" in log
    assert is_complete_checkpoint(out / "finetune")
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == set(SIX) | {"finetune"}
    assert all(results["methods"][m]["cached"] for m in SIX)  # the six were kept, not retrained
    assert bg.start(quick=True, device="cpu", out=out)["reason"] == "nothing to train"


def test_concurrent_starts_spawn_one_trainer(tmp_path):
    out = quick_six(tmp_path / "demo-quick")
    results = []
    barrier = threading.Barrier(4)

    def go():
        barrier.wait()
        results.append(bg.start(quick=True, device="cpu", out=out))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["started"] for r in results) == 1, results
    bg.stop(out, timeout=300)
    assert not bg.is_running(out)


def test_tracker_reports_method_steps_and_time_left(tmp_path):
    stop = threading.Event()
    tr = bg.Tracker(tmp_path, ["finetune"], stop)
    tr.progress(0.5, "training finetune")
    assert bg.read_status(tmp_path)["method"] == "finetune"
    tr.status["epoch_total"] = 2
    assert tr.on_step(1, 10, 2.0, 1e-4) is None
    time.sleep(0.2)
    assert tr.on_step(2, 10, 1.9, 1e-4) is None
    eta = tr.status["eta_seconds"]
    # 0.2 s per step, 8 steps left plus evaluation: between the bare steps and twice that
    assert 8 * 0.2 <= eta <= 2 * 8 * 0.2 + 1, eta
    tr.write()
    on_disk = json.loads((tmp_path / bg.STATUS_NAME).read_text())
    assert on_disk["step"] == 2 and on_disk["eta_seconds"] == eta
    text = bg.describe(tr.status)
    assert text.startswith("finetune: step 2/10 · epoch 1/2 ·") and "left" in text, text
    stop.set()
    assert tr.on_step(3, 10, 1.8, 1e-4) is False  # a stop request stops the run after this step
    tr.progress(0.9, "pretune: step 3/9, loss 1.000")
    assert tr.status["method"] == "pretune"


def test_status_of_a_killed_trainer_reads_interrupted(tmp_path):
    bg.write_status(tmp_path, {"state": "running", "pid": 1, "methods": ["finetune"]})
    status = bg.read_status(tmp_path)
    assert status["state"] == "interrupted" and not status["running"]
    assert "resumes" in bg.describe(status)


def test_prepare_demo_background_cli_on_the_cpu_plan(tmp_path):
    """The app's first start, for real: ``prepare-demo --background`` returns with the backbone, the task
    and the six shipped checkpoints in place and full fine-tuning training in a niced background process;
    running it again starts no second trainer."""
    from toast_core.io.checkpoints import is_complete_checkpoint
    from toast_core.demo import demo_dir

    out = demo_dir()
    env = {**os.environ, "TOAST_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "toast_core", "prepare-demo", "--background", "--device", "cpu", "--quiet"]
    try:
        first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert first.returncode == 0, first.stdout + first.stderr
        if "every demo checkpoint is in place" in first.stdout:
            pytest.skip("this cache already holds a trained full fine-tuning checkpoint")
        assert "training finetune in the background" in first.stdout, first.stdout
        for m in SIX:
            assert is_complete_checkpoint(out / m), m
        assert not is_complete_checkpoint(out / "finetune")
        assert bg.is_running(out)
        second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0 and "already running" in second.stdout, second.stdout + second.stderr
    finally:
        final = bg.stop(out, timeout=300)
    assert not bg.is_running(out)
    assert final is None or final["state"] in ("stopped", "done", "failed"), final
