"""Tests of toast_core.analysis.metrics against hand-computed cases and independent references."""
import math

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from toast_core.errors import InputError
from toast_core.analysis.metrics import (
    attention_entropy, bootstrap_ci, box_to_mask, deletion_insertion_curves, detection_auc,
    energy_in_mask, iou_at_threshold, mask_coverage, object_mass, part_hit, pointing_game,
    prefix_share, pxap, upsample_map,
)


def cols_mask(H, W, x_end):
    """Mask of columns [0, x_end)."""
    m = np.zeros((H, W), bool)
    m[:, :x_end] = True
    return m


# --- mask coverage -------------------------------------------------------------------------------

def test_coverage_divisible_half_patch():
    cov = mask_coverage(cols_mask(64, 64, 24), (4, 4))  # patches are 16 px; mask ends mid-patch 1
    np.testing.assert_allclose(cov, np.tile([1.0, 0.5, 0.0, 0.0], (4, 1)))


def test_coverage_non_divisible_hand_value():
    # 10 px over 3 patches: cells [0, 3.33), [3.33, 6.67), [6.67, 10); mask covers [0, 5)
    cov = mask_coverage(cols_mask(10, 10, 5), (3, 3))
    np.testing.assert_allclose(cov, np.tile([1.0, 0.5, 0.0], (3, 1)), atol=1e-12)


def test_coverage_matches_area_resize_and_mean():
    rng = np.random.default_rng(0)
    m = rng.random((37, 23)) < 0.3
    cov = mask_coverage(m, (5, 4))
    ref = cv2.resize(m.astype(np.float64), (4, 5), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(cov, ref, atol=1e-6)
    assert cov.mean() == pytest.approx(m.mean(), abs=1e-12)


# --- energy / pointing game ----------------------------------------------------------------------

@pytest.mark.parametrize("shape,grid", [((64, 64), (4, 4)), ((37, 23), (5, 4)), ((224, 200), (16, 14))])
def test_energy_uniform_map_is_mask_fraction(shape, grid):
    m = np.random.default_rng(1).random(shape) < 0.4
    assert energy_in_mask(np.ones(grid), m) == pytest.approx(m.mean(), abs=1e-12)


def test_energy_inside_outside_and_zero_map():
    mask = cols_mask(64, 64, 32)  # patch columns 0 and 1 fully inside
    inside = np.zeros((4, 4)); inside[:, :2] = np.arange(1, 9).reshape(4, 2)
    outside = np.zeros((4, 4)); outside[1, 3] = 5.0
    assert energy_in_mask(inside, mask) == pytest.approx(1.0)
    assert energy_in_mask(outside, mask) == 0.0
    assert energy_in_mask(inside + outside, mask) == pytest.approx(36 / 41)
    assert math.isnan(energy_in_mask(np.zeros((4, 4)), mask))
    assert energy_in_mask(torch.tensor(inside), torch.tensor(mask)) == pytest.approx(1.0)


def test_pointing_game_border_cases():
    peak = np.zeros((4, 4)); peak[2, 1] = 1.0  # centre of patch (2, 1) is (y, x) = (40, 24) px
    assert pointing_game(peak, cols_mask(64, 64, 24), tolerance_px=0)  # centre on the border: hit
    assert pointing_game(peak, cols_mask(64, 64, 25), tolerance_px=0)
    just_out = cols_mask(64, 64, 23)  # mask ends 1 px before the centre
    assert not pointing_game(peak, just_out, tolerance_px=0)
    assert not pointing_game(peak, just_out, tolerance_px=0.99)
    assert pointing_game(peak, just_out, tolerance_px=1)
    assert pointing_game(peak, just_out)  # default 15 px
    far = np.zeros((64, 64), bool); far[:, 60:] = True  # 36 px away
    assert not pointing_game(peak, far) and pointing_game(peak, far, tolerance_px=36)


def test_pointing_game_diagonal_distance_and_non_divisible():
    peak = np.zeros((4, 4)); peak[0, 0] = 1.0  # centre (8, 8)
    corner = np.zeros((64, 64), bool); corner[20:, 20:] = True  # nearest point (20, 20): 12*sqrt2
    assert not pointing_game(peak, corner, tolerance_px=16.9)
    assert pointing_game(peak, corner, tolerance_px=17.0)
    # 30 px over 4 patches (7.5 px): patch column 3 centre x = 26.25
    m = np.zeros((3, 4)); m[1, 3] = 2.0
    assert pointing_game(m, cols_mask(30, 30, 27), tolerance_px=0)
    assert not pointing_game(m, cols_mask(30, 30, 26), tolerance_px=0.2)
    assert pointing_game(m, cols_mask(30, 30, 26), tolerance_px=0.25)


# --- IoU / AUC / PxAP ----------------------------------------------------------------------------

def test_iou_exact_values():
    m = np.zeros((4, 4)); m[0, :2] = 1.0  # 2 patches = 512 px
    mask = np.zeros((64, 64), bool); mask[:16, :48] = True  # 768 px, contains the 2 patches
    assert iou_at_threshold(m, mask) == pytest.approx(512 / 768)
    m2 = m.copy(); m2[3, 3] = 0.4  # below 0.5: not kept; kept at 0.3 and with "mean"
    assert iou_at_threshold(m2, mask, 0.5) == pytest.approx(512 / 768)
    assert iou_at_threshold(m2, mask, 0.3) == pytest.approx(512 / (768 + 256))
    assert iou_at_threshold(m2, mask, "mean") == pytest.approx(512 / (768 + 256))
    assert iou_at_threshold(m2, mask, quantile=0.9) == pytest.approx(512 / 768)
    assert iou_at_threshold(np.ones((4, 4)), mask) == pytest.approx(768 / 4096)  # constant: all kept


def test_auc_hand_cases():
    mask = cols_mask(64, 64, 32)
    ind = np.zeros((4, 4)); ind[:, :2] = 1.0
    assert detection_auc(np.ones((4, 4)), mask) == pytest.approx(0.5)
    assert detection_auc(ind, mask) == pytest.approx(1.0)
    assert detection_auc(1.0 - ind, mask) == pytest.approx(0.0)
    assert pxap(ind, mask) == pytest.approx(1.0)
    assert pxap(np.ones((4, 4)), mask) == pytest.approx(0.5)  # precision = prevalence
    assert detection_auc(ind, mask, upsample="bilinear") == pytest.approx(1.0)


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_auc_and_ap_match_sklearn(upsample):
    rng = np.random.default_rng(3)
    m = np.round(rng.random((5, 4)), 1)  # rounding makes ties
    mask = rng.random((37, 23)) < 0.35
    pix = upsample_map(m, 37, 23, mode=upsample).ravel()
    assert detection_auc(m, mask, upsample) == pytest.approx(roc_auc_score(mask.ravel(), pix), abs=1e-9)
    assert pxap(m, mask, upsample) == pytest.approx(average_precision_score(mask.ravel(), pix), abs=1e-9)


def test_upsample_nearest_boundaries_and_bilinear_range():
    up = upsample_map(np.arange(3.0)[None], 1, 10)  # boundaries round(0, 3.33, 6.67, 10) = 0, 3, 7, 10
    np.testing.assert_array_equal(up[0], [0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    m = np.random.default_rng(4).random((3, 5))
    bi = upsample_map(m, 24, 40, mode="bilinear")
    ref = torch.nn.functional.interpolate(torch.tensor(m)[None, None], size=(24, 40), mode="bilinear",
                                          align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(bi, ref, atol=1e-12)


# --- object mass, entropy, prefix share ----------------------------------------------------------

def test_object_mass():
    m = np.arange(1.0, 17.0).reshape(4, 4)
    target = cols_mask(64, 64, 16)  # patch column 0: 1+5+9+13 = 28
    dis = np.zeros((64, 64), bool); dis[:, 48:] = True  # column 3: 4+8+12+16 = 40
    overlap = np.zeros((64, 64), bool); overlap[:, :16] = True  # overlaps target only: counts as target
    out = object_mass(m, target, [dis, overlap])
    assert out["target"] == pytest.approx(28 / 136) and out["distractors"] == pytest.approx(40 / 136)
    assert out["target"] + out["distractors"] + out["background"] == pytest.approx(1.0)
    assert out["ratio"] == pytest.approx(28 / 68)
    none = object_mass(m, target)
    assert none["distractors"] == 0.0 and none["ratio"] == 1.0
    with pytest.raises(InputError, match="distractor mask 0"):
        object_mass(m, target, [np.ones((10, 10), bool)])


def test_entropy():
    assert attention_entropy(np.ones((7, 9))) == pytest.approx(1.0)
    assert attention_entropy(np.ones((7, 9)), normalise=False) == pytest.approx(math.log(63))
    peak = np.zeros((4, 4)); peak[1, 2] = 3.0
    assert attention_entropy(peak) == 0.0
    two = np.zeros((4, 4)); two[0, :2] = 1.0
    assert attention_entropy(two) == pytest.approx(math.log(2) / math.log(16))
    assert math.isnan(attention_entropy(np.zeros((2, 2))))


def test_prefix_share():
    assert prefix_share(0.7, 0.2, 0.1) == pytest.approx(0.3)
    row = np.array([0.1, 0.05, 0.05, 0.2, 0.6])  # CLS, 2 prompts, 2 patches
    assert prefix_share(row[3:], row[:1], row[1:3]) == pytest.approx(0.2)
    assert prefix_share(torch.tensor([0.5, 0.5]), 0.0) == 0.0
    with pytest.raises(InputError):
        prefix_share(0.5, -0.1)


# --- boxes and parts -----------------------------------------------------------------------------

def test_box_to_mask():
    a = box_to_mask((2, 1, 5, 4), 6, 8)
    assert a.sum() == 9 and a[1:4, 2:5].all()
    np.testing.assert_array_equal(box_to_mask((2, 1, 3, 3), 6, 8, fmt="xywh"), a)
    assert box_to_mask((-5, -5, 100, 100), 6, 8).all()  # clipped
    with pytest.raises(InputError, match="no area"):
        box_to_mask((5, 1, 2, 4), 6, 8)
    with pytest.raises(InputError, match="no pixel"):
        box_to_mask((20, 20, 30, 30), 6, 8)


def test_part_hit():
    peak = np.zeros((4, 4)); peak[0, 0] = 1.0  # peak at (x, y) = (8, 8)
    pts = np.array([[8, 20, 1], [30, 8, 1], [0, 0, 0], [np.nan, np.nan, 1]], float)  # 12 px, 22 px
    out = part_hit(peak, pts, (64, 64), tolerance_px=15)
    assert out == {"fraction": 0.5, "hit": True, "n_visible": 2}
    assert part_hit(peak, pts, (64, 64), tolerance_px=5)["hit"] is False
    assert part_hit(peak, pts[:, :2], (64, 64), tolerance_px=25)["n_visible"] == 3
    assert math.isnan(part_hit(peak, pts[2:3], (64, 64))["fraction"])


# --- input validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [energy_in_mask, pointing_game, iou_at_threshold, detection_auc, pxap,
                                lambda m, k: object_mass(m, k, [])])
def test_validation(fn):
    mask = cols_mask(32, 32, 10)
    with pytest.raises(InputError, match="non-negative"):
        fn(-np.ones((4, 4)), mask)
    with pytest.raises(InputError, match="NaN"):
        fn(np.full((4, 4), np.nan), mask)
    with pytest.raises(InputError, match="smaller than the map grid"):
        fn(np.ones((4, 4)), mask[:3])
    with pytest.raises(InputError, match="empty"):
        fn(np.ones((4, 4)), np.zeros((32, 32), bool))
    with pytest.raises(InputError, match="2-D"):
        fn(np.ones((1, 4, 4)), mask)
    with pytest.raises(ValueError):  # InputError is a ValueError
        fn(np.ones((4, 4)), np.full((32, 32), 2))


# --- deletion / insertion ------------------------------------------------------------------------

def region_predict(region):
    """Probability of class 0 = share of the region's original intensity still present."""
    r = torch.as_tensor(region, dtype=torch.float32)
    calls = []

    def predict(batch):
        calls.append(batch.shape[0])
        s = (batch * r).sum(dim=(1, 2, 3)) / (3 * r.sum())
        return torch.stack([s, 1 - s], dim=1)
    return predict, calls


def test_deletion_insertion_analytic():
    region = np.zeros((64, 64)); region[:32, :32] = 1  # patches (0,0) (0,1) (1,0) (1,1) of 4x4
    image = torch.ones(3, 64, 64)
    good = np.full((4, 4), 0.1); good[:2, :2] = np.array([[4, 3], [2, 1]])
    predict, calls = region_predict(region)
    out = deletion_insertion_curves(predict, image, good, 0, steps=16, baseline="zero", batch_size=5)
    np.testing.assert_allclose(out["fractions"], np.arange(17) / 16)
    np.testing.assert_allclose(out["deletion"][:6], [1, 0.75, 0.5, 0.25, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out["insertion"], 1 - out["deletion"], atol=1e-6)
    assert out["deletion_auc"] == pytest.approx(0.125, abs=1e-6)
    assert out["insertion_auc"] == pytest.approx(0.875, abs=1e-6)
    assert max(calls) <= 5 and sum(calls) == 34
    bad = deletion_insertion_curves(predict, image, good.max() - good, 0, steps=16, baseline="zero")
    assert bad["deletion_auc"] == pytest.approx(0.875, abs=1e-6)
    assert bad["deletion_auc"] > out["deletion_auc"] and bad["insertion_auc"] < out["insertion_auc"]
    coarse = deletion_insertion_curves(predict, image, good, 0, steps=4, baseline="zero")
    np.testing.assert_allclose(coarse["deletion"], [1, 0, 0, 0, 0], atol=1e-6)


def test_deletion_non_divisible_and_baselines():
    rng = np.random.default_rng(5)
    image = torch.tensor(rng.random((3, 30, 22)), dtype=torch.float32)
    region = np.zeros((30, 22)); region[:10, :] = 1
    predict, _ = region_predict(region)
    m = np.zeros((3, 3)); m[0] = [3, 2, 1]
    for base in ("blur", "mean", "zero", torch.zeros(3, 30, 22)):
        out = deletion_insertion_curves(predict, image, m, 0, steps=9, baseline=base)
        assert out["deletion"].shape == (10,) and out["insertion"].shape == (10,)
        full = float(predict(image[None])[0, 0])
        assert out["deletion"][0] == pytest.approx(full) and out["insertion"][-1] == pytest.approx(full)
    zero = deletion_insertion_curves(predict, image, m, 0, steps=9, baseline="zero")
    assert zero["deletion"][3] == pytest.approx(0.0, abs=1e-6)  # row boundary round(10) = 10 exactly
    with pytest.raises(InputError, match="baseline"):
        deletion_insertion_curves(predict, image, m, 0, baseline="noise")
    with pytest.raises(InputError, match="predict must return"):
        deletion_insertion_curves(predict, image, m, 5)


# --- bootstrap -----------------------------------------------------------------------------------

def test_bootstrap_ci():
    v = np.random.default_rng(6).normal(2.0, 1.0, 200)
    mean, lo, hi = bootstrap_ci(v, seed=1)
    assert mean == pytest.approx(v.mean()) and lo < mean < hi
    assert 0.2 < hi - lo < 0.35  # about 2 * 1.96 / sqrt(200) = 0.277
    assert bootstrap_ci(v, seed=1) == (mean, lo, hi)
    assert bootstrap_ci(v, seed=2) != (mean, lo, hi)
    with_nan = np.concatenate([v, [np.nan, np.nan]])
    assert bootstrap_ci(with_nan, seed=1) == (mean, lo, hi)
    assert bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)
    assert all(math.isnan(x) for x in bootstrap_ci([np.nan]))
    with pytest.raises(InputError):
        bootstrap_ci(v, ci=1.5)
