"""A user's own labelled folder of real photos, end to end: scan -> train several methods (tiny backbone,
tiny budget) -> the models load -> maps render -> analysis CSV; bad folders give clear errors; the
background run stops and resumes; two datasets with the same class names do not collide."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from toast_core.data.photos import load_photo
from toast_core.data.scan import scan_folder
from toast_core.errors import InputError
from toast_core.demo.dataset_run import DatasetRunSpec, complete_checkpoints, list_runs, train_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: class -> the real photograph its images are cropped from (photos shipped in PyPI wheels)
SOURCES = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}
PER_SPLIT = {"train": 6, "val": 2, "test": 3}
SIDE = 64
BOX = [16, 16, 48, 48]
TINY = dict(backbone="vit_tiny_patch16_224", pretrained=False, image_size=32,
            backbone_kwargs=dict(patch_size=8, depth=3, embed_dim=32, num_heads=2))
QUICK = dict(epochs=1, batch_size=8, stage1={"n_fit": 16, "n_held_out": 8})


def build_folder(root: Path, seed: int = 0, per_split: dict = PER_SPLIT) -> Path:
    """Random square crops of three real photos, one class per photo; boxes for the test split, masks
    for two training images."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for c, src in SOURCES.items():
        photo = np.asarray(load_photo(src))
        h, w = photo.shape[:2]
        for split, n in per_split.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
                y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
                Image.fromarray(photo[y:y + s, x:x + s]).resize((SIDE, SIDE)).save(root / split / c / f"{i}.jpg")
                if split == "test":
                    boxes[f"test/{c}/{i}.jpg"] = BOX
    (root / "boxes.json").write_text(json.dumps(boxes))
    for c in ("cat", "coffee"):
        (root / "masks/train" / c).mkdir(parents=True, exist_ok=True)
        mask = np.zeros((SIDE, SIDE), np.uint8)
        mask[10:40, 12:50] = 255
        Image.fromarray(mask).save(root / "masks/train" / c / "0.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_folder(tmp_path_factory.mktemp("your_data") / "photos")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TOAST_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_scan_reports_classes_counts_masks_boxes_and_samples(folder):
    r = scan_folder(folder)
    assert r.classes == ["cat", "coffee", "rocket"] and r.ok
    assert {s: v.n_images for s, v in r.splits.items()} == {"train": 18, "val": 6, "test": 9}
    assert r.splits["train"].with_mask == 2 and r.splits["test"].with_box == 9 and r.has_masks
    assert r.checked_images == 33 and not r.splits["val"].held_out_of_train
    assert r.samples["rocket"] == [f"train/rocket/{i}.jpg" for i in range(4)]
    assert [p.level for p in r.problems] == ["warning"] * 3  # 6 training images per class is few
    assert r.counts_table()[0] == {"class": "cat", "train": 6, "val": 2, "test": 3}


def test_scan_lists_every_problem_and_training_refuses(tmp_path, home):
    root = build_folder(tmp_path / "bad")
    (root / "train/cat/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "train/cat/notes.txt").write_text("hello")
    (root / "train/empty").mkdir()
    (root / "test/dog").mkdir()
    (root / "test/dog/0.jpg").write_bytes((root / "test/cat/0.jpg").read_bytes())
    r = scan_folder(root)
    errors = " | ".join(p.message for p in r.errors)
    assert "unreadable image train/cat/broken.jpg" in errors
    assert "class 'empty' has no images in train/" in errors
    assert "test/ has classes that train/ lacks: ['dog']" in errors
    assert any("notes.txt" in p.message for p in r.warnings)
    with pytest.raises(InputError, match="cannot be trained on: .*broken.jpg.*'empty'"):
        train_dataset(DatasetRunSpec(name="bad", data=str(root), **TINY, **QUICK), device="cpu")
    assert not (home / "datasets").exists()


def test_one_image_per_class_is_a_clear_error_not_a_crash(tmp_path, home):
    root = build_folder(tmp_path / "tiny", per_split={"train": 1})
    r = scan_folder(root)
    assert any("has 1 training image" in p.message for p in r.errors)
    with pytest.raises(InputError, match="each class needs at least 2"):
        train_dataset(DatasetRunSpec(name="tiny", data=str(root), **TINY, **QUICK), device="cpu")
    for path in ("no-such-dir", "."):
        assert not scan_folder(tmp_path / path).ok


def test_end_to_end_scan_train_load_maps_analysis(folder, home, tmp_path):
    import toast_core as tc
    from toast_core import cli
    from toast_core.maps import maps_for
    from toast_core.viz.render import overlay

    spec = DatasetRunSpec(name="Real photos", data=str(folder), **TINY, **QUICK)
    t0 = time.perf_counter()
    res = train_dataset(spec, device="cpu")
    directory = Path(res["dir"])
    assert directory.parent == home / "datasets" and directory.name.startswith("real-photos-")
    assert list(res["methods"]) == list(tc.available_methods())
    assert not any(r["cached"] for r in res["methods"].values())
    found = complete_checkpoints(directory)
    assert list(found) == list(tc.available_methods())
    assert [r["name"] for r in list_runs()] == ["Real photos"]
    assert not (home / "demo").exists()  # nothing of the default models is written

    image = np.asarray(Image.open(folder / "test/rocket/0.jpg").convert("RGB").resize((32, 32)))
    x = tc.load_image(folder / "test/rocket/0.jpg").resize((32, 32))
    batch = ((torch.from_numpy(np.asarray(x, np.float32) / 255).permute(2, 0, 1) - 0.5) / 0.5)[None]
    for method, path in found.items():
        model = tc.load_checkpoint(path)
        assert model.checkpoint_info["classes"] == ["cat", "coffee", "rocket"]
        assert model.checkpoint_info["dataset_run"]["name"] == "Real photos"
        maps, _ = maps_for(model, batch, "cls")
        m = maps[0].numpy()
        assert m.shape == (4, 4) and np.isfinite(m).all()
        assert overlay(image, m, float(m.min()), float(m.max()) + 1e-6).shape == (32, 32, 3)

    out = tmp_path / "analysis"
    rc = cli.main(["analyze", "--checkpoints", *map(str, found.values()), "--data", str(folder), "--out", str(out),
                   "--kinds", "cls", "--layers", "last", "--bootstrap", "10", "--device", "cpu", "--no-progress"])
    assert rc == 0
    with open(out / "rows.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == set(found) and len({r["image_id"] for r in rows}) == 9

    mtime = found["lora"].stat().st_mtime_ns  # a second run keeps what is complete
    again = train_dataset(spec, device="cpu")
    assert all(r["cached"] for r in again["methods"].values()) and found["lora"].stat().st_mtime_ns == mtime
    longer = DatasetRunSpec(name="Real photos", data=str(folder), methods=("linear",), **TINY,
                            **{**QUICK, "epochs": 2})
    train_dataset(longer, device="cpu")  # other settings: the earlier checkpoint moves to previous/
    assert len(list((directory / "previous").glob("linear-*/model.safetensors"))) == 1
    assert time.perf_counter() - t0 < 60


def test_same_class_names_in_two_folders_do_not_collide(folder, home, tmp_path):
    other = shutil.copytree(folder, tmp_path / "elsewhere" / "photos")
    dirs = []
    for root in (folder, other):
        spec = DatasetRunSpec(name="photos", data=str(root), methods=("linear",), **TINY, **QUICK)
        dirs.append(train_dataset(spec, device="cpu")["dir"])
    assert dirs[0] != dirs[1] and all(complete_checkpoints(d) for d in dirs)


def test_train_all_cli_from_a_zip_and_a_hostile_zip(folder, home, tmp_path, capsys):
    from toast_core import cli

    tiny = ["--backbone", TINY["backbone"], "--pretrained", "random", "--image-size", "32",
            "--backbone-kwargs", json.dumps(TINY["backbone_kwargs"]), "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--quiet", "--methods", "linear,lora"]
    good = tmp_path / "photos.zip"
    with zipfile.ZipFile(good, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, "photos/" + p.relative_to(folder).as_posix())
    assert cli.main(["train-all", "--data", str(good), "--name", "zipped", *tiny]) == 0
    runs = list_runs()
    assert [r["name"] for r in runs] == ["zipped"] and runs[0]["complete"] == ["linear", "lora"]
    assert (home / "uploads").is_dir()
    bad = tmp_path / "evil.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("photos/train/cat/0.jpg", (folder / "train/cat/0.jpg").read_bytes())
        zf.writestr("../../evil.jpg", (folder / "train/cat/0.jpg").read_bytes())
    bad.write_bytes(buf.getvalue())
    capsys.readouterr()
    assert cli.main(["train-all", "--data", str(bad), *tiny]) == 1
    assert "outside the archive's folder" in capsys.readouterr().err
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_background_run_reports_per_method_and_stops_then_resumes(folder, home):
    from toast_core.demo.background import read_status
    from toast_core.demo import dataset_background as bg

    spec = DatasetRunSpec(name="bg", data=str(folder), methods=("linear", "lora"), **TINY,
                          **{**QUICK, "epochs": 8})
    env = {"OMP_NUM_THREADS": "1", "TOAST_HOME": str(home)}
    got = bg.start(spec, device="cpu", env=env, estimate={"methods": {"linear": {"seconds": 1.0},
                                                                       "lora": {"seconds": 5.0}}})
    assert got["started"], got
    assert bg.start(spec, device="cpu")["reason"] == "already running"
    directory = Path(got["dir"])

    def wait(pred, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = read_status(directory)
            if s and pred(s):
                return s
            time.sleep(0.1)
        log = (directory / "background.log").read_text()
        raise AssertionError(f"timed out; status {read_status(directory)}; log {log}")

    s = wait(lambda s: s.get("method") == "lora" and s.get("total_eta_seconds") is not None
             or s.get("state") in ("done", "failed"))
    assert s["per_method"]["linear"]["state"] == "done" and s["per_method"]["lora"]["state"] == "training"
    assert s["total_eta_seconds"] >= s["eta_seconds"] >= 0 and s["step"] < s["total"]
    s = bg.stop(directory, timeout=60)
    assert s["state"] == "stopped", s
    assert not complete_checkpoints(directory).get("lora") and (directory / "lora/last.safetensors").is_file()
    assert bg.start(spec, device="cpu", env=env)["started"]
    s = wait(lambda s: s.get("state") in ("done", "failed"))
    assert s["state"] == "done", s
    assert s["per_method"]["linear"]["state"] == "kept" and s["per_method"]["lora"]["state"] == "done"
    assert "resumed from" in (directory / "background.log").read_text()
    assert list(complete_checkpoints(directory)) == ["linear", "lora"]
    assert os.path.isfile(directory / "results.json")
