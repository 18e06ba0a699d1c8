"""Batch analysis: vectorised metrics equal the reference functions, the tidy CSV schema, summaries with
CIs, plots, the CUB-200-2011 reader, and the ``analyze --quick`` command end to end."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_model
from toast_core import analysis as an
from toast_core.analysis import metrics as mt
from toast_core.data.cub import CUBDataset, find_cub_root, read_cub
from toast_core.data.demo_task import DemoTaskConfig, generate_demo_task
from toast_core.data.masked_dataset import MaskedImageDataset
from toast_core.errors import InputError
from toast_core.maps import rollout
from toast_core.recording import extract_attention

IMG = 32  # tiny models: 32 px, patch 8 -> 4x4 grid, 3 blocks


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return generate_demo_task(tmp_path_factory.mktemp("task") / "quick", DemoTaskConfig.quick(image_size=64), workers=1)


@pytest.fixture(scope="module")
def dataset(task_dir):
    return MaskedImageDataset(task_dir, "test", image_size=IMG, mean=(0.5,) * 3, std=(0.5,) * 3)


# ------------------------------------------------------------------------------------------------
# Vectorised metrics == the per-map reference functions
# ------------------------------------------------------------------------------------------------

def _random_case(rng, H, W, grid):
    tm = np.zeros((H, W), bool)
    y0, x0 = rng.integers(0, H - 6), rng.integers(0, W - 6)
    tm[y0:y0 + rng.integers(3, 9), x0:x0 + rng.integers(2, 10)] = True
    tm[rng.integers(0, H), rng.integers(0, W)] = True  # a stray pixel: non-convex masks too
    dm = np.zeros((H, W), bool)
    dm[rng.integers(0, H - 5):, :rng.integers(2, W)] = rng.random() < 0.8
    parts = np.c_[rng.uniform(0, W, 5), rng.uniform(0, H, 5), rng.integers(0, 2, 5)]
    return tm, dm, parts


def _maps(rng, grid):
    h, w = grid
    return [rng.random(grid), np.ones(grid), np.round(rng.random(grid) * 3) / 3,  # ties
            np.eye(h, w) * 5 + 0.1, np.pad(np.ones((1, 1)), ((0, h - 1), (w - 1, 0))),  # peak on the border
            rng.random(grid) ** 8]


@pytest.mark.parametrize("H,W,grid", [(32, 32, (4, 4)), (37, 29, (5, 4)), (20, 20, (20, 20))])
def test_batch_metrics_equal_reference_functions(H, W, grid):
    rng = np.random.default_rng(H * W)
    for _ in range(4):
        tm, dm, parts = _random_case(rng, H, W, grid)
        tol = float(rng.choice([0.0, 3.0, 15.0]))
        geo = an.image_geometry(tm, grid, dm, parts, tolerance_px=tol)
        maps = _maps(rng, grid)
        G = an._stack_geometry([geo] * len(maps))
        got = an.batch_map_metrics(torch.tensor(np.stack(maps)), G, threshold=0.5)
        for k, m in enumerate(maps):
            om = mt.object_mass(m, tm, [dm])
            assert got["energy_target"][k] == pytest.approx(om["target"], abs=1e-9)
            assert got["energy_distractors"][k] == pytest.approx(om["distractors"], abs=1e-9)
            assert got["energy_background"][k] == pytest.approx(om["background"], abs=1e-9)
            assert got["energy_target"][k] == pytest.approx(mt.energy_in_mask(m, tm), abs=1e-9)
            assert got["pointing_hit"][k] == float(mt.pointing_game(m, tm, tolerance_px=tol))
            assert got["iou"][k] == pytest.approx(mt.iou_at_threshold(m, tm, 0.5), abs=1e-9)
            assert got["auc"][k] == pytest.approx(mt.detection_auc(m, tm), abs=1e-9)
            assert got["entropy"][k] == pytest.approx(mt.attention_entropy(m), abs=1e-9)
            ph = mt.part_hit(m, parts, (H, W), tolerance_px=tol)
            assert got["part_hit"][k] == pytest.approx(ph["fraction"], abs=1e-12, nan_ok=True)


def test_hand_computed_cases_and_undefined_values():
    tm = np.zeros((8, 8), bool)
    tm[:4, :4] = True  # top-left quarter
    geo = an._stack_geometry([an.image_geometry(tm, (2, 2), None, tolerance_px=0)] * 3)
    maps = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    got = an.batch_map_metrics(maps, geo)
    assert got["energy_target"][:2].tolist() == [0.25, 1.0]  # uniform map: the mask's area share
    assert got["auc"][:2].tolist() == [0.5, 1.0] and got["iou"][:2].tolist() == [0.25, 1.0]
    assert got["entropy"][:2].tolist() == [1.0, 0.0] and got["pointing_hit"][1] == 1.0
    assert math.isnan(got["energy_distractors"][0])  # no distractor annotation: undefined, not 0
    assert math.isnan(got["energy_target"][2]) and math.isnan(got["entropy"][2])  # zero map
    empty = an.image_geometry(np.zeros((8, 8), bool), (2, 2))  # e.g. a degenerate CUB box
    got = an.batch_map_metrics(maps[:1], an._stack_geometry([empty]))
    assert all(math.isnan(got[k][0]) for k in ("energy_target", "pointing_hit", "iou", "auc"))
    with pytest.raises(InputError):
        an.batch_map_metrics(torch.tensor([[[math.nan, 0.0], [0.0, 0.0]]]), geo)


def test_rollout_all_layers_equals_maps_rollout():
    model = tiny_model("vpt-deep")  # prompt tokens in the layout too
    x = torch.randn(2, 3, IMG, IMG)
    res = extract_attention(model, x, full=True)
    allr = an.rollout_all_layers(res, "main")
    for layer in range(allr.shape[0]):
        torch.testing.assert_close(allr[layer], rollout(res, "main", end_layer=layer))


def test_parse_options():
    assert an.parse_layers("all", 4) == [0, 1, 2, 3]
    assert an.parse_layers("last", 4) == [3]
    assert an.parse_layers("0,-1, 2", 4) == [0, 2, 3]
    for bad in ("5", "x", ""):
        with pytest.raises(InputError):
            an.parse_layers(bad, 4)
    assert an.parse_kinds("cls, rollout") == ["cls", "rollout"]
    with pytest.raises(InputError):
        an.parse_kinds("cls,gradcam")
    with pytest.raises(InputError):
        an.resolve_device("no-such-device")
    assert an.resolve_device("cpu").type == "cpu"


# ------------------------------------------------------------------------------------------------
# The engine: schema, ranges, invariants
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rows(dataset):
    models = {"linear": tiny_model("linear", num_classes=12), "toast": tiny_model("toast", num_classes=12)}
    seen = []
    out = an.run_analysis(models, dataset, layers="all", kinds="cls,rollout,token_norm", batch_size=5,
                          device="cpu", progress=lambda d, t: seen.append((d, t)), faithfulness=True,
                          faithfulness_steps=4, as_frame=False)
    assert seen[-1] == (2 * len(dataset), 2 * len(dataset)) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    return out


def test_rows_schema_and_count(rows, dataset):
    n = len(dataset)
    assert all(tuple(r) == an.COLUMNS for r in rows)
    # linear: 1 pass, toast: 2 passes; 3 layers; 3 kinds
    assert len(rows) == n * (1 + 2) * 3 * 3
    keys = {(r["image_id"], r["method"], r["pass"], r["layer"], r["kind"]) for r in rows}
    assert len(keys) == len(rows)  # one row per image x method x pass x layer x kind
    assert {r["pass"] for r in rows if r["method"] == "toast"} == {"bottom-up", "top-down"}
    assert {r["pass"] for r in rows if r["method"] == "linear"} == {"main"}


def test_row_values_in_range(rows):
    for r in rows:
        assert r["correct"] == float(r["pred"] == r["label"])
        assert 0 < r["prob"] <= 1 and 0 <= r["prob_label"] <= r["prob"] + 1e-9
        for k in ("energy_target", "energy_distractors", "energy_background", "iou", "auc", "entropy"):
            assert 0 <= r[k] <= 1 + 1e-9, (k, r)
        assert r["energy_target"] + r["energy_distractors"] + r["energy_background"] == pytest.approx(1)
        assert 0 < r["target_area"] < 0.2 and 0 < r["distractor_area"] < 0.5
        assert r["pointing_hit"] in (0.0, 1.0)
        if r["kind"] == "cls":
            assert 0 < r["prefix_share"] < 1 and r["prompt_share"] == 0
        else:
            assert math.isnan(r["prefix_share"])
        assert math.isnan(r["part_hit"])  # the default task has no parts
        if r["method"] == "toast":
            assert r["td_ratio"] > 0 and (0 <= r["gate_energy_target"] <= 1 or math.isnan(r["gate_energy_target"]))
        else:
            assert math.isnan(r["td_ratio"]) and math.isnan(r["gate_energy_target"])
        faith = r["kind"] == "cls" and r["layer"] == 2 and r["pass"] in ("main", "top-down")
        for k in ("deletion_auc", "insertion_auc"):
            assert (0 <= r[k] <= 1) if faith else math.isnan(r[k]), (k, r)


def test_frozen_backbone_maps_agree(rows):
    """Linear probe and TOAST's bottom-up pass run the same frozen backbone (same seed): same maps."""
    lin = {(r["image_id"], r["layer"], r["kind"]): r["energy_target"] for r in rows if r["method"] == "linear"}
    bu = {(r["image_id"], r["layer"], r["kind"]): r["energy_target"] for r in rows if r["pass"] == "bottom-up"}
    assert lin.keys() == bu.keys()
    assert all(lin[k] == pytest.approx(bu[k], abs=1e-6) for k in lin)


def test_forward_kwargs_and_models_restored(dataset):
    model = tiny_model("toast", num_classes=12).train()
    out = an.run_analysis({"td0": model}, an._Limited(dataset, 4), layers="last", kinds="cls", device="cpu",
                          batch_size=3, forward_kwargs={"td0": {"td_scale": 0.0}}, faithfulness=True,
                          faithfulness_steps=2, faithfulness_max_images=2, as_frame=False)
    assert model.training  # mode restored
    assert sorted(r["image_id"] for r in out if np.isfinite(r["deletion_auc"])) == [0, 1]  # first 2 images only
    assert all(r["td_ratio"] == 0 for r in out)  # no steering at td_scale 0
    by = {(r["image_id"], r["pass"]): r["energy_target"] for r in out}
    for (img, p), v in by.items():  # td_scale 0: the second pass repeats the first
        assert v == pytest.approx(by[(img, "bottom-up")], abs=1e-6)
    with pytest.raises(InputError):
        an.run_analysis({"m": model}, dataset, forward_kwargs={"other": {}})
    with pytest.raises(InputError):  # the model has fewer classes than the data
        an.run_analysis({"m": tiny_model("linear", num_classes=2)}, dataset, layers="last", kinds="cls")


def test_dataframe_output(dataset):
    pd = pytest.importorskip("pandas")
    df = an.run_analysis({"linear": tiny_model("linear", num_classes=12)}, an._Limited(dataset, 3),
                         layers="last", kinds="cls", device="cpu")
    assert isinstance(df, pd.DataFrame) and tuple(df.columns) == an.COLUMNS and len(df) == 3
    assert len(an._records(an.summarise(df))) == 1


# ------------------------------------------------------------------------------------------------
# Summaries, CSV, plots
# ------------------------------------------------------------------------------------------------

def test_summary_cis_contain_the_mean(rows, dataset):
    table = an._records(an.summarise(rows, n_boot=200))
    assert len(table) == (1 + 2) * 3 * 3  # one group per method x pass x kind x layer
    for t in table:
        assert t["n"] == len(dataset)
        for m in ("correct", "energy_target", "auc", "pointing_hit"):
            lo, mean, hi = t[f"{m}_lo"], t[f"{m}_mean"], t[f"{m}_hi"]
            assert lo - 1e-12 <= mean <= hi + 1e-12, (m, t)
    ref = [r["energy_target"] for r in rows if (r["method"], r["kind"], r["layer"]) == ("linear", "cls", 1)]
    row = next(t for t in table if (t["method"], t["kind"], t["layer"]) == ("linear", "cls", 1))
    assert row["energy_target_mean"] == pytest.approx(np.mean(ref))
    head = an.headline_table(rows, "cls", n_boot=200)
    assert [h["method"] for h in head] == ["linear", "toast", "toast (bottom-up)"]
    for h in head:
        for k in ("accuracy", "energy_target_last", "energy_target_layers", "deletion_auc"):
            mean, lo, hi = h[k] if h["pass"] != "bottom-up" or k != "deletion_auc" else (0, 0, 0)
            assert lo - 1e-12 <= mean <= hi + 1e-12
    lay = an._records(an.layer_average(rows, n_boot=200))
    assert {(t["method"], t["pass"], t["kind"]) for t in lay} == {(r["method"], r["pass"], r["kind"]) for r in rows}


def test_csv_round_trip_and_report(rows, tmp_path):
    rows = [r for r in rows if r["kind"] != "token_norm"]  # fewer plots to draw
    written = an.write_report(rows, tmp_path, meta={"test": True}, n_boot=100)
    back = an.read_rows_csv(tmp_path / "rows.csv")
    assert len(back) == len(rows) and tuple(back[0]) == an.COLUMNS
    assert back[5]["energy_target"] == pytest.approx(rows[5]["energy_target"], rel=1e-5)
    assert back[5]["layer"] == rows[5]["layer"] and back[5]["pass"] == rows[5]["pass"]
    assert math.isnan(back[0]["part_hit"])
    md = (tmp_path / "summary.md").read_text()
    assert "| toast |" in md and "| toast (bottom-up) |" in md and "[" in md and "Chance level" in md
    for kind in ("cls", "rollout"):
        for stem in (f"layers_{kind}", f"accuracy_vs_energy_{kind}"):
            png, pdf = tmp_path / f"{stem}.png", tmp_path / f"{stem}.pdf"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
            assert Image.open(png).size[0] > 300
    assert (tmp_path / "run.json").is_file() and len(written["plots"]) == 8


def test_plot_functions_return_figures(rows):
    from matplotlib.figure import Figure

    fig = an.plot_metric_vs_layer(rows, ["energy_target", "pointing_hit"], kind="rollout", n_boot=50)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["linear", "toast (bottom-up)", "toast"]
    fig = an.plot_accuracy_vs_energy(rows, kind="cls", n_boot=50)
    assert isinstance(fig, Figure) and len(fig.legends[0].get_texts()) == 2  # beside the plot
    assert not fig.axes[0].texts  # no labels at the points (they overlapped where methods agree)
    with pytest.raises(InputError):
        an.plot_accuracy_vs_energy(rows, kind="integrated_gradients")


# ------------------------------------------------------------------------------------------------
# CUB-200-2011 layout
# ------------------------------------------------------------------------------------------------

def write_synthetic_cub(root: Path, n_images: int = 6, n_classes: int = 3, size=(60, 40), seed: int = 0) -> Path:
    """A tiny folder in CUB's layout: one bright box per image on noise, 15 parts (odd ids inside the
    box and visible, even ids invisible); odd image ids are training images."""
    rng = np.random.default_rng(seed)
    (root / "parts").mkdir(parents=True, exist_ok=True)
    W, H = size
    lines = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    for k in range(1, n_images + 1):
        c = (k - 1) % n_classes + 1
        rel = f"{c:03d}.Class_{c}/img_{k:04d}.png"
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 60, size=(H, W, 3), dtype=np.uint8)
        bw, bh = int(rng.integers(W // 4, W // 2)), int(rng.integers(H // 4, H // 2))
        bx, by = int(rng.integers(0, W - bw)), int(rng.integers(0, H - bh))
        arr[by:by + bh, bx:bx + bw] = (220, 40 * c, 40)
        Image.fromarray(arr).save(root / "images" / rel)
        lines["images"].append(f"{k} {rel}")
        lines["labels"].append(f"{k} {c}")
        lines["split"].append(f"{k} {k % 2}")
        lines["boxes"].append(f"{k} {bx}.0 {by}.0 {bw}.0 {bh}.0")
        for part in range(1, 16):
            if part % 2:
                lines["locs"].append(f"{k} {part} {bx + rng.uniform(0, bw):.1f} {by + rng.uniform(0, bh):.1f} 1")
            else:
                lines["locs"].append(f"{k} {part} 0.0 0.0 0")
    for name, key in {"images.txt": "images", "image_class_labels.txt": "labels", "train_test_split.txt": "split",
                      "bounding_boxes.txt": "boxes", "parts/part_locs.txt": "locs"}.items():
        (root / name).write_text("\n".join(lines[key]) + "\n")
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.Class_{c}\n" for c in range(1, n_classes + 1)))
    (root / "parts" / "parts.txt").write_text("".join(f"{p} part {p}\n" for p in range(1, 16)))
    return root


def test_cub_reader(tmp_path):
    root = write_synthetic_cub(tmp_path / "CUB_200_2011")
    assert find_cub_root(tmp_path) == root and find_cub_root(root) == root and find_cub_root(tmp_path / "x") is None
    info = read_cub(tmp_path)
    assert [r["image_id"] for r in info["records"]] == [1, 2, 3, 4, 5, 6]
    assert info["class_names"] == ["001.Class_1", "002.Class_2", "003.Class_3"] and len(info["part_names"]) == 15
    test = CUBDataset(tmp_path, "test", image_size=30)
    assert len(test) == 3 and [test.records[i]["image_id"] for i in range(3)] == [2, 4, 6]
    assert test.labels == [1, 0, 2] and len(CUBDataset(root, "train", image_size=30)) == 3
    item = test[0]
    rec = test.records[0]
    x, y, w, h = rec["box"]
    assert item["image"].shape == (3, 30, 30) and item["label"] == 1 and item["image_id"] == 2
    expected = mt.box_to_mask((x * 30 / 60, y * 30 / 40, w * 30 / 60, h * 30 / 40), 30, 30, fmt="xywh")
    assert np.array_equal(item["target_mask"].numpy(), expected)
    parts = item["parts"].numpy()
    assert parts.shape == (15, 3) and parts[::2, 2].all() and not parts[1::2, 2].any()
    vis = parts[parts[:, 2] > 0]  # visible parts lie in the (resized) box
    assert (vis[:, 0] >= x / 2 - 1e-4).all() and (vis[:, 0] <= (x + w) / 2 + 1e-4).all()
    assert (vis[:, 1] >= y * 0.75 - 1e-4).all() and (vis[:, 1] <= (y + h) * 0.75 + 1e-4).all()
    with pytest.raises(InputError):
        CUBDataset(root, "val")


def test_cub_reader_rejects_broken_layouts(tmp_path):
    root = write_synthetic_cub(tmp_path / "c")
    (root / "bounding_boxes.txt").write_text("1 0 0 5\n")
    with pytest.raises(InputError, match="bounding_boxes.txt line 1"):
        read_cub(root)
    root = write_synthetic_cub(tmp_path / "d")
    (root / "image_class_labels.txt").write_text("1 1\n")
    with pytest.raises(InputError, match="no entry for image id"):
        read_cub(root)
    (root / "images.txt").unlink()
    with pytest.raises(InputError, match="not a CUB-200-2011 folder"):
        read_cub(root)


def test_analysis_on_cub_layout(tmp_path):
    root = write_synthetic_cub(tmp_path / "CUB_200_2011", n_images=8)
    model = tiny_model("toast-lite", num_classes=3)
    ds = an.load_dataset(tmp_path, "test", model=model)  # detects the layout; size from the model
    assert isinstance(ds, CUBDataset) and ds[0]["image"].shape == (3, IMG, IMG)
    out = an.run_analysis({"toast-lite": model}, ds, layers="last", kinds="cls", device="cpu", as_frame=False)
    assert len(out) == 4 * 2
    assert all(0 <= r["part_hit"] <= 1 for r in out)
    assert all(math.isnan(r["energy_distractors"]) for r in out)  # CUB has no distractor annotation
    assert all(0 <= r["energy_target"] <= 1 for r in out)


def test_analysis_on_image_folder_with_masks(tmp_path):
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(2):
                Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(tmp_path / split / c / f"{k}.png")
    (tmp_path / "masks" / "test" / "cat").mkdir(parents=True)
    mask = np.zeros((24, 40), np.uint8)
    mask[:12, :20] = 255  # top-left quarter
    Image.fromarray(mask).save(tmp_path / "masks" / "test" / "cat" / "0.png")
    with pytest.raises(InputError, match="masks"):
        an.load_dataset(_no_masks(tmp_path), "test")
    model = tiny_model("linear", num_classes=2)
    ds = an.load_dataset(tmp_path, "test", model=model)
    out = an.run_analysis({"linear": model}, ds, layers="last", kinds="cls", device="cpu", as_frame=False)
    assert len(out) == 4
    with_mask = [r for r in out if r["image_id"] == 0]
    assert len(with_mask) == 1 and 0 <= with_mask[0]["energy_target"] <= 1
    assert all(math.isnan(r["energy_target"]) for r in out if r["image_id"] != 0)  # no mask: undefined


def _no_masks(src: Path) -> Path:
    import shutil

    dst = src.parent / (src.name + "_nomask")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("masks"))
    return dst


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------

def test_cli_quick_end_to_end(tmp_path, monkeypatch):
    from toast_core.cli import main

    monkeypatch.setenv("TOAST_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    start = time.perf_counter()
    rc = main(["analyze", "--quick", "--out", str(out), "--kinds", "cls", "--faithfulness", "--no-progress",
               "--bootstrap", "200"])
    elapsed = time.perf_counter() - start
    assert rc == 0
    assert elapsed < 120  # ~20 s on a quiet 2-core machine; generous for shared CPUs
    rows = an.read_rows_csv(out / "rows.csv")
    methods = ["linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite"]
    assert list(dict.fromkeys(r["method"] for r in rows)) == methods
    n_img = 12
    assert len(rows) == n_img * (5 + 2 * 2) * 3  # 5 one-pass + 2 two-pass methods, 3 layers
    for name in ("summary.csv", "layer_average.csv", "summary.md", "run.json", "layers_cls.png", "layers_cls.pdf",
                 "accuracy_vs_energy_cls.pdf"):
        assert (out / name).stat().st_size > 100, name
    md = (out / "summary.md").read_text()
    assert all(f"| {m} |" in md for m in methods) and "deletion AUC" in md


def test_cli_errors(tmp_path, capsys, monkeypatch):
    from toast_core.cli import main

    monkeypatch.setenv("TOAST_HOME", str(tmp_path / "empty-home"))  # other tests may have built demo models

    assert main(["analyze", "--out", str(tmp_path)]) == 1
    assert "choose models" in capsys.readouterr().err
    assert main(["analyze", "--checkpoints", str(tmp_path / "nope"), "--data", str(tmp_path), "--out", str(tmp_path)]) == 1
    assert main(["analyze", "--quick", "--kinds", "nope", "--out", str(tmp_path)]) == 1
    assert main(["analyze", "--demo", "--out", str(tmp_path)]) == 1  # no checkpoints in the test cache
    assert "prepare-demo" in capsys.readouterr().err
