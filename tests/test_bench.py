"""The benchmark command: its --quick output is complete and correct (structure, agreement), not its timings."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from toast_core import bench
from toast_core.cli import main

from .conftest import TINY, tiny_model

METHODS = ["linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `python -m toast_core bench --quick` run shared by the tests of this module."""
    out = tmp_path_factory.mktemp("bench")
    rc = main(["bench", "--quick", "--profile", "--out", str(out)])
    return rc, out, json.loads((out / "bench.json").read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_run_writes_json_markdown_and_plot(quick):
    rc, out, res = quick
    assert rc == 0
    assert set(res["sections"]) == set(bench.SECTIONS)
    png = (out / "scaling.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    md = (out / "bench.md").read_text()
    for header in ("## Machine", "## Targets", "## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "scaling.png"):
        assert header in md
    assert res["command"].startswith("python -m toast_core bench") and "--quick" in res["command"]
    assert "Profile of" in md and "| record |" in md
    m = res["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["torch_threads"] == 1 and m["device"] == "cpu"
    assert res["dtype"] == "fp32"


def test_quick_run_ratios_are_positive_and_targets_listed(quick):
    _, _, res = quick
    s = res["sections"]
    specs = len(bench.QUICK_SPECS)
    assert len(s["record"]) == len(s["peer"]) == len(s["toast"]) == len(s["train"]) == specs
    for r in s["record"]:
        assert _positive(r["overhead"]) and _positive(r["times"]["record"]["cpu_ratio"])
        assert r["times"]["plain"]["ratio"] == 1.0
        assert len(r["times"]["plain"]["runs_ms"]) == 2
        prof = r["profile"]
        assert prof["record"]["aten_calls"] > prof["record_cls"]["aten_calls"] > prof["plain"]["aten_calls"] > 0
        assert _positive(r["overhead_cls"])
        assert prof["plain"]["issue_ms"] > 0 and prof["plain"]["top"]
        # the analytic FLOP count equals FlopCounterMode's count plus the SDPA terms it cannot see
        assert r["forward_gflop"] == pytest.approx(r["forward_gflop_counted"], rel=1e-9)
    for r in s["toast"]:
        assert _positive(r["ratio"]) and _positive(r["ratio_lite"])
        assert 2.0 < r["flop_ratio"] < 2.6  # two passes of the same backbone plus the feedback path
    for r in s["train"]:
        assert set(METHODS) | {"toast:pretune"} == set(r["ratios"])
        assert r["ratios"]["finetune"] == 1.0 and all(_positive(v) for v in r["ratios"].values())
        assert r["trainable"]["finetune"] > r["trainable"]["toast"] > r["trainable"]["linear"]
    a = s["analysis"]
    assert all(_positive(v) for v in a["images_per_s"].values())
    assert set(a["throughput_ratio"]) == {"analysis", "metrics_per_map"}
    names = [t["target"] for t in res["targets"]]
    assert sum("recording overhead" in n for n in names) == 2 * specs  # CLS maps; + token norms
    assert sum("TOAST inference" in n for n in names) == specs
    assert any("batch analysis" in n for n in names) and any("peak memory" in n for n in names)
    assert all(t["met"] in (True, False) for t in res["targets"])


def test_quick_run_maps_of_both_paths_agree(quick):
    """The peer (timm AttentionExtract on a fused-off timm model, same weights) gives the same maps,
    also with register tokens (the second quick backbone has 4)."""
    _, _, res = quick
    for r in res["sections"]["peer"]:
        assert r["maps_agree"] and r["maps_max_abs_diff"] < 1e-5
        L, B = r["maps_shape"][:2]
        assert B == 2 and L in (2, 3)
        assert r["peak_bytes"]["peer"] > 0 and r["peak_bytes"]["plain"] > 0
        assert _positive(r["time_ratio"]) and _positive(r["time_ratio_vs_hooks"])
    a = res["sections"]["analysis"]
    assert a["metrics_finite"] and a["energy_paths_max_abs_diff"] < 1e-9 and a["pointing_paths_agree"]


def test_quick_run_scaling_grid(quick):
    _, _, res = quick
    rows = res["sections"]["scaling"]["rows"]
    assert [(r["img_size"], r["batch"]) for r in rows] == [(32, 1), (32, 2), (48, 1), (48, 2)]
    assert [r["tokens"] for r in rows] == [17, 17, 37, 37]  # 1 CLS + (size / 8)^2 patches
    for r in rows:
        assert r["peer_extra_kind"] == "measured"
        assert r["plain_ms"] > 0 and r["record_ms"] > 0 and r["plain_peak_bytes"] > 0
    # more images and more tokens need more memory (measured, deterministic)
    assert rows[1]["plain_peak_bytes"] > rows[0]["plain_peak_bytes"]
    assert rows[2]["plain_peak_bytes"] > rows[0]["plain_peak_bytes"]
    assert rows[3]["peer_extra_bytes"] > rows[0]["peer_extra_bytes"]


def test_time_interleaved_alternates_and_counts():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "ABC"}
    times = bench.time_interleaved(fns, torch.device("cpu"), reps=3, warmup=1)
    assert calls[:3] == ["A", "B", "C"]  # warm-up
    timed = calls[3:]
    assert len(timed) == 9 and all(timed.count(n) == 3 for n in "ABC")
    assert len({tuple(timed[i:i + 3]) for i in range(0, 9, 3)}) == 3  # the order changes every repetition
    assert all(len(times[n]) == 3 and len(times[f"cpu:{n}"]) == 3 for n in "ABC")


def test_summarise_times_pairs_repetitions():
    times = {"a": [1.0, 2.0, 4.0], "b": [1.5, 2.0, 8.0], "cpu:a": [1.0, 1.0, 1.0], "cpu:b": [2.0, 2.0, 2.0]}
    s = bench.summarise_times(times, base="a")
    assert s["b"]["ratio"] == pytest.approx(1.5)  # median of 1.5, 1.0, 2.0
    assert s["b"]["ratio_of_medians"] == pytest.approx(1.0)
    assert s["b"]["cpu_ratio"] == pytest.approx(2.0)
    assert s["a"]["median_ms"] == pytest.approx(2000.0) and "cpu:a" not in s


def test_peak_memory_sees_cpu_tensors():
    n = 1_000_000
    peak = bench.peak_memory(lambda: torch.ones(n, dtype=torch.float32), torch.device("cpu"))
    assert 4 * n <= peak < 4 * n + 65536
    # a temporary that is freed before the end still counts at its peak
    peak2 = bench.peak_memory(lambda: float((torch.ones(2 * n) * 2).sum()), torch.device("cpu"))
    assert peak2 >= 8 * n


def test_analytic_flops_match_the_flop_counter():
    model = tiny_model("linear")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        counted = bench.counted_flops(lambda: model(x))
    total = counted["total"] + (0 if counted["attention_counted"] else bench.attention_flops(model, x))
    assert bench.analytic_forward_flops(model, x) == total


def test_fused_attn_switch_is_restored_and_peer_unfused():
    from timm.layers import config as timm_config

    before = timm_config._USE_FUSED_ATTN
    spec = bench.BackboneSpec(TINY["backbone"], TINY["img_size"], TINY["backbone_kwargs"])
    model = tiny_model("linear", num_classes=bench.NUM_CLASSES)
    peer = bench.Peer(spec, torch.device("cpu"), source=model)
    assert timm_config._USE_FUSED_ATTN == before
    assert not any(b.attn.fused_attn for b in peer.vit.blocks)
    x = torch.randn(3, 3, 32, 32)
    import toast_core as tc

    ours = tc.extract_attention(model, x).cls["main"]
    assert torch.allclose(peer.cls_maps(x), ours, atol=1e-6)


def test_random_masks_and_matrix_estimate():
    masks = bench.random_box_masks(4, 64, seed=3)
    assert len(masks) == 4 and all(m.shape == (64, 64) and m.dtype == np.bool_ and 0 < m.mean() < 1 for m in masks)
    # ViT-S/14 at 224 px, batch 8: 12 layers x 8 x 6 heads x 257^2 floats
    assert bench.peer_matrix_bytes(bench.DEFAULT_SPECS[0], 224, 8, 6, 12, 1, 14) == 12 * 8 * 6 * 257 ** 2 * 4


def test_bad_options_are_reported(capsys):
    assert main(["bench", "--quick", "--sections", "record,nope", "--out", "/nonexistent/x"]) == 1
    assert "unknown section" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--sizes", "224,abc"])
    with pytest.raises(Exception, match="batch"):
        bench.BenchConfig(batch=0).validate()


def test_targets_use_cpu_time_only_for_single_thread_cpu_runs(quick, tmp_path):
    _, out, res = quick
    assert bench.timing_basis(res) == "cpu"  # quick runs with one torch thread
    rec = [t for t in res["targets"] if t["target"].startswith("recording overhead")]
    assert all(t["value"] == t["value_cpu"] and t["basis"] == "cpu" for t in rec)
    mem = [t for t in res["targets"] if "memory" in t["target"]]
    assert all(t["basis"] == "memory" and t["value_wall"] is None for t in mem)
    gpu_like = json.loads(json.dumps(res))
    gpu_like["machine"]["torch_threads"] = 2
    rec2 = [t for t in bench.evaluate_targets(gpu_like, "cpu") if t["target"].startswith("recording overhead")]
    assert all(t["basis"] == "wall" and t["value"] == t["value_wall"] for t in rec2)
    # --render rewrites the report of a saved run without measuring
    assert main(["bench", "--render", str(out / "bench.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench.md").read_text().startswith("## Machine")
    assert main(["bench", "--render", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 1
