"""Sharded analysis: ``torchrun --nproc_per_node 2 -m toast_core analyze`` (gloo, CPU) gives the rows one
process gives, in the same order; only rank 0 writes."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toast_core.analysis import load_dataset, read_rows_csv, run_analysis
from toast_core.analysis.distributed import _run_batches, batch_starts, merge_shards
from toast_core.commands.analyze import _quick_models
from toast_core.errors import InputError

from .conftest import TINY, tiny_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
KEYS = ("image_id", "method", "layer", "kind", "pass", "label", "pred")


def test_batches_are_dealt_round_robin_and_merged_back_in_order():
    assert batch_starts(10, 3, 0, 2) == [0, 6] and batch_starts(10, 3, 1, 2) == [3, 9]
    assert batch_starts(4, 8, 1, 2) == []  # more ranks than batches: the extra rank has nothing to do
    shards = [{"batches": [[0, ["a0", "a1"]], [6, ["c"]]], "error": None}, {"batches": [[3, ["b"]]], "error": None}]
    assert merge_shards(shards) == ["a0", "a1", "b", "c"]
    with pytest.raises(InputError, match="rank 1: bad label"):
        merge_shards([shards[0], {"batches": [], "error": "bad label"}])
    with pytest.raises(InputError, match="two ranks"):
        merge_shards([shards[0], shards[0]])


def _toy_dataset(n, size=32):
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        mask = torch.zeros(size, size, dtype=torch.bool)
        mask[4 + i: 16 + i, 8:20] = True
        items.append({"image": torch.randn(3, size, size, generator=g), "label": i % 3, "target_mask": mask})
    return items


def test_shards_in_one_process_equal_the_whole_run():
    """What each rank computes (its batches), merged, is the single run's rows exactly, ids included."""
    models = {"toast": tiny_model("toast", num_classes=3), "lora": tiny_model("lora", num_classes=3)}
    data = _toy_dataset(5)
    options = dict(kinds=("cls", "rollout"), faithfulness=True, faithfulness_steps=2, faithfulness_max_images=3)
    whole = run_analysis(models, data, batch_size=2, device="cpu", as_frame=False, **options)
    shards = [{"batches": _run_batches(models, data, batch_starts(len(data), 2, r, 3), 2, torch.device("cpu"),
                                       None, options), "error": None} for r in range(3)]
    merged = merge_shards(shards)
    assert len(merged) == len(whole) == 5 * 2 * 3 * 2 + 5 * 1 * 3 * 2  # TOAST: two passes
    assert all(_same(a, b) for a, b in zip(merged, whole))
    with pytest.raises(InputError, match="batch_starts"):
        run_analysis(models, data, batch_size=2, device="cpu", batch_starts=[1], **options)


def _same(a: dict, b: dict) -> bool:
    """Equal rows, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def _close(a, b) -> bool:
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_two_gloo_processes_give_the_single_process_rows(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOAST_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "toast_core", "analyze", "--quick", "--out", str(out), "--no-progress", "--batch-size", "2",
           "--max-images", "6", "--kinds", "cls,rollout", "--bootstrap", "20"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.count("# Attention analysis") == 1  # rank 1 printed no summary
    assert "2 processes" in proc.stderr
    sharded = read_rows_csv(out / "rows.csv")

    # The same models and images in this one process (one torch thread, as the torchrun processes).
    models = _quick_models(12)
    data = load_dataset(out / "quick_task", "test", model=next(iter(models.values())), max_images=6)
    single = run_analysis(models, data, kinds=("cls", "rollout"), batch_size=2, device="cpu", as_frame=False)
    assert len(sharded) == len(single) == 6 * 7 * 3 * 2 + 6 * 2 * 3 * 2  # TOAST models have two passes
    for got, want in zip(sharded, single):
        assert all(str(got[k]) == str(want[k]) for k in KEYS), (got, want)
        bad = [c for c in want if c not in KEYS and not _close(got[c], want[c])]
        assert not bad, (bad, got, want)
