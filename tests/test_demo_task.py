"""The default task generator: determinism, exact masks, manifest, validity, the torch reader."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from toast_core.data import demo_task as dt
from toast_core.data.demo_task import (
    DemoTaskConfig,
    generate_demo_task,
    is_valid_demo_task,
    load_manifest,
    render_example,
)
from toast_core.data.demo_samples import task_statistics, write_demo_samples
from toast_core.data.masked_dataset import IMAGENET_MEAN, IMAGENET_STD, MaskedImageDataset, PairedAugment
from toast_core.data.photos import PHOTO_NAMES, load_photo
from toast_core.data.shapes import SHAPE_NAMES, _inside_rotated, rasterise_shape, shape_geometry
from toast_core.errors import InputError

QUICK = DemoTaskConfig.quick()
_TIMING: dict[str, float] = {}


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "quick"
    start = time.perf_counter()
    generate_demo_task(out, QUICK, workers=1)
    _TIMING["quick"] = time.perf_counter() - start
    return out


def test_at_least_ten_classes_and_photos_load_offline():
    assert len(SHAPE_NAMES) >= 10 and len(set(SHAPE_NAMES)) == len(SHAPE_NAMES)
    for name in PHOTO_NAMES:  # every background ships in a wheel: no pooch download
        img = load_photo(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 256


def test_quick_generation_is_fast_and_valid(quick_dir):
    assert _TIMING["quick"] < 20  # a couple of seconds on a quiet machine; generous for shared CPUs
    assert is_valid_demo_task(quick_dir, QUICK)
    assert is_valid_demo_task(quick_dir, QUICK, check_hashes=True)
    assert not is_valid_demo_task(quick_dir, DemoTaskConfig.quick(seed=1))
    assert not list(quick_dir.parent.glob(".*partial*"))  # no temp dir left behind


def test_same_config_gives_identical_bytes(quick_dir, tmp_path):
    other = generate_demo_task(tmp_path / "again", QUICK, workers=2)
    assert _tree_digest(other) == _tree_digest(quick_dir)
    different = generate_demo_task(tmp_path / "seed1", DemoTaskConfig.quick(seed=1), workers=1)
    assert _tree_digest(different)["images/train/00000.png"] != _tree_digest(quick_dir)["images/train/00000.png"]


def test_manifest_schema(quick_dir):
    m = load_manifest(quick_dir)
    assert m["format"] == dt.MANIFEST_FORMAT and m["version"] == dt.DEMO_TASK_VERSION
    assert DemoTaskConfig.from_dict(m["config"]) == QUICK and m["config"]["seed"] == QUICK.seed
    assert m["class_names"] == list(SHAPE_NAMES)
    assert {b["name"] for b in m["backgrounds"]} == set(PHOTO_NAMES)
    assert all(b["licence"] and b["package"] for b in m["backgrounds"])
    assert m["splits"] == {"train": 24, "val": 12, "test": 12}
    assert len(m["images"]) == 48
    for e in m["images"]:
        assert set(e) >= {"split", "index", "image", "mask", "label", "class_name", "objects", "background"}
        assert e["image"] == f"images/{e['split']}/{e['index']:05d}.png"
        assert e["background"]["source"] in PHOTO_NAMES and len(e["background"]["crop"]) == 4
        for o in e["objects"]:
            assert set(o) >= {"role", "class_id", "class_name", "bbox", "mask_value", "area", "contrast", "colour"}


def test_all_classes_present_and_balanced_in_train(quick_dir):
    labels = [e["label"] for e in load_manifest(quick_dir)["images"] if e["split"] == "train"]
    assert sorted(set(labels)) == list(range(len(SHAPE_NAMES)))
    counts = np.bincount(labels)
    assert counts.max() - counts.min() <= 1


def test_masks_are_exact_and_consistent_with_manifest(quick_dir):
    m = load_manifest(quick_dir)
    lo, hi = QUICK.n_distractors
    for e in m["images"]:
        mask = np.asarray(Image.open(quick_dir / e["mask"]))
        image = np.asarray(Image.open(quick_dir / e["image"]))
        assert mask.shape == (QUICK.image_size,) * 2 and image.shape == (QUICK.image_size,) * 2 + (3,)
        objs = e["objects"]
        targets = [o for o in objs if o["role"] == "target"]
        assert len(targets) == 1 and targets[0]["mask_value"] == 1
        assert targets[0]["class_id"] == e["label"] and e["class_name"] == SHAPE_NAMES[e["label"]]
        assert lo <= len(objs) - 1 <= hi
        classes = [o["class_id"] for o in objs]
        assert len(set(classes)) == len(classes)  # target class never repeated by a distractor
        assert set(np.unique(mask)) == {0} | {o["mask_value"] for o in objs}  # disjoint by construction
        for o in objs:
            ys, xs = np.nonzero(mask == o["mask_value"])
            assert o["area"] == len(ys) > 0
            assert o["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert 0 <= o["bbox"][0] and o["bbox"][2] <= QUICK.image_size  # whole object inside the image
        # Outside every mask the pixels are exactly the background crop; inside, the object's colour.
        background, _ = dt._background(dt._rng(QUICK.seed, e["split"], 0, e["index"]), QUICK.image_size)
        assert np.array_equal(image[mask == 0], background[mask == 0])
        for o in objs:
            pixels = image[mask == o["mask_value"]].astype(float)
            own = np.abs(np.median(pixels, 0) - o["colour"]["rgb"]).max()
            assert own < 30, (e["image"], o)


def test_target_is_the_red_object(quick_dir):
    for e in load_manifest(quick_dir)["images"]:
        fam = {o["role"]: o["colour"]["family"] for o in e["objects"] if o["role"] == "target"}
        assert fam == {"target": "red"}
        assert all(o["colour"]["family"] != "red" for o in e["objects"] if o["role"] == "distractor")
        # same lightness/chroma rules for every object: colour alone does not make the target pop out
        assert all(dt.LIGHTNESS_RANGE[0] <= o["colour"]["lch"][0] <= dt.LIGHTNESS_RANGE[1] for o in e["objects"])


def test_edge_supersampling_equals_full_supersampling():
    rng = np.random.default_rng(3)
    for t in range(36):
        name = SHAPE_NAMES[t % len(SHAPE_NAMES)]
        scale, cx, cy, angle = rng.uniform(4, 30), 60 + rng.random(), 60 + rng.random(), rng.uniform(0, 2 * np.pi)
        y0, x0, fast = rasterise_shape(name, cx, cy, scale, angle, 128)
        ss = 4
        h, w = fast.shape
        xs = (x0 + (np.arange(w * ss) + 0.5) / ss - cx).astype(np.float32)
        ys = (y0 + (np.arange(h * ss) + 0.5) / ss - cy).astype(np.float32)
        dx, dy = np.meshgrid(xs, ys)
        inside = _inside_rotated(name, dx, dy, np.float32(np.cos(angle) / scale), np.float32(np.sin(angle) / scale))
        full = 2 * inside.reshape(h, ss, w, ss).sum(axis=(1, 3)) >= ss * ss
        assert np.array_equal(fast, full), name
        area, _ = shape_geometry(name)
        assert abs(fast.sum() - area * scale**2) <= 0.1 * area * scale**2 + 4


@pytest.mark.parametrize("size", [112, 140, 168, 224])
def test_supported_image_sizes(size):
    cfg = DemoTaskConfig(image_size=size, n_train=1, n_val=0, n_test=0)
    image, mask, record = render_example(cfg, "train", 0, 5)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8 and mask.shape == (size, size)
    fractions = [o["area"] / size**2 for o in record["objects"]]
    assert all(0.4 * cfg.object_area[0] <= f <= 1.1 * cfg.object_area[1] for f in fractions)


def test_invalid_configs_raise_input_error():
    for bad in (dict(image_size=8), dict(n_train=0), dict(n_distractors=(3, 2)), dict(n_distractors=(0, 9)),
                dict(object_area=(0.1, 0.5)), dict(seed=-1), dict(version="0")):
        with pytest.raises(InputError):
            DemoTaskConfig(**bad)
    with pytest.raises(InputError):
        DemoTaskConfig.from_dict({"image_size": 64, "colour": "red"})
    assert DemoTaskConfig.from_dict(QUICK.to_dict()) == QUICK


def test_interrupted_run_leaves_nothing_that_looks_valid(tmp_path):
    out = tmp_path / "broken"

    def stop(done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_demo_task(out, QUICK, progress=stop, workers=1)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_never_replaces_a_foreign_directory(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(InputError, match="not a demo-task directory"):
        generate_demo_task(foreign, QUICK, workers=1)
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"
    with pytest.raises(InputError):
        render_example(QUICK, "train", 0, len(SHAPE_NAMES))


def test_validity_detects_missing_or_changed_files(quick_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(quick_dir, copy)
    victim = copy / "masks" / "val" / "00003.png"
    data = victim.read_bytes()
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert is_valid_demo_task(copy, QUICK) and not is_valid_demo_task(copy, QUICK, check_hashes=True)
    victim.unlink()
    assert not is_valid_demo_task(copy, QUICK)
    # regenerating replaces the broken directory and keeps a valid one untouched
    generate_demo_task(copy, QUICK, workers=1)
    assert is_valid_demo_task(copy, QUICK, check_hashes=True)
    before = (copy / "manifest.json").stat().st_mtime_ns
    generate_demo_task(copy, QUICK)
    assert (copy / "manifest.json").stat().st_mtime_ns == before


def test_task_statistics_show_a_focus_task(quick_dir):
    s = task_statistics(quick_dir)
    assert s["images"] == {"train": 24, "val": 12, "test": 12}
    assert s["target_class_among_distractors"] == 0.0
    assert 1 / 4 <= s["bag_of_shapes_oracle_accuracy"] <= 1 / 3  # 2-3 distractors
    assert 0.6 < s["target_area_mean"] / s["distractor_area_mean"] < 1.5
    assert 0.6 < s["target_contrast_mean"] / s["distractor_contrast_mean"] < 1.5


def test_dataset_items(quick_dir):
    ds = MaskedImageDataset(quick_dir, "val", image_size=112)
    assert len(ds) == 12 and ds.num_classes == len(SHAPE_NAMES)
    item = ds[3]
    assert item["image"].shape == (3, 112, 112) and item["image"].dtype == torch.float32
    assert item["target_mask"].shape == (112, 112) and item["target_mask"].dtype == torch.bool
    assert item["distractor_mask"].dtype == torch.bool and not (item["target_mask"] & item["distractor_mask"]).any()
    assert item["target_mask"].any() and item["distractor_mask"].any()
    assert item["label"] == ds.labels[3]
    # normalisation: undoing it recovers the stored pixels at the stored size
    native = MaskedImageDataset(quick_dir, "val")[3]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    raw = np.array(Image.open(quick_dir / ds.entries[3]["image"]))
    assert torch.allclose((native["image"] * std + mean) * 255, torch.from_numpy(raw).permute(2, 0, 1).float(), atol=1e-3)
    stored = np.asarray(Image.open(quick_dir / ds.entries[3]["mask"]))
    assert np.array_equal(native["target_mask"].numpy(), stored == 1)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 112, 112) and batch["target_mask"].shape == (4, 112, 112)
    with pytest.raises(InputError):
        MaskedImageDataset(quick_dir, "holdout")
    with pytest.raises(InputError):
        MaskedImageDataset(quick_dir.parent / "nothing-here")


def test_paired_augment_moves_masks_with_pixels(quick_dir):
    flip = MaskedImageDataset(quick_dir, "train", transform=PairedAugment(scale=(1.0, 1.0), hflip=1.0))[0]
    plain = MaskedImageDataset(quick_dir, "train")[0]
    assert torch.equal(flip["image"], plain["image"].flip(-1))
    assert torch.equal(flip["target_mask"], plain["target_mask"].flip(-1))
    gen = torch.Generator().manual_seed(0)
    ds = MaskedImageDataset(quick_dir, "train", transform=PairedAugment(scale=(0.6, 0.9), generator=gen))
    for i in range(6):
        item = ds[i]
        area = int(item["target_mask"].sum())
        assert area >= 0.9 * load_manifest(quick_dir)["images"][i]["objects"][0]["area"]  # target kept, zoomed in
        # the mask still marks the red pixels: their mean colour is reddish (R clearly above G and B)
        rgb = item["image"] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        r, g, b = (rgb[c][item["target_mask"]].mean() for c in range(3))
        assert r > g + 0.05 and r > b + 0.05


def test_gallery_samples_are_small_and_reproducible(tmp_path):
    paths = write_demo_samples(tmp_path / "a")
    assert len(paths) == 8
    meta = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert len({s["label"] for s in meta["samples"]}) == 8  # distinct target classes
    for p, s in zip(paths, meta["samples"]):
        assert p.stat().st_size < 50_000
        image = np.asarray(Image.open(p).convert("RGB"))
        mask = np.asarray(Image.open(p.with_name(s["mask"])))
        assert image.shape == (224, 224, 3) and (mask == 1).sum() == s["objects"][0]["area"]
    again = write_demo_samples(tmp_path / "b", n=2)
    assert [q.read_bytes() for q in again] == [q.read_bytes() for q in paths[:2]]


def test_committed_gallery_matches_the_generator():
    assets = Path(__file__).resolve().parents[1] / "assets" / "demo_samples"
    if not (assets / "samples.json").is_file():
        pytest.skip("assets/demo_samples not generated")
    meta = json.loads((assets / "samples.json").read_text())
    for i, s in enumerate(meta["samples"]):
        _, mask, record = render_example(DemoTaskConfig.from_dict(meta["config"]), "gallery", i, s["label"])
        assert np.array_equal(np.asarray(Image.open(assets / s["mask"])), mask)
        assert record["objects"] == s["objects"]
