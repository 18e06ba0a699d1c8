"""toast_core.analysis.task_distance: the threshold comes from held-out images, points off the task's
distribution are far, the reference round-trips through its file, bad input is refused."""
import numpy as np
import pytest
import torch

from toast_core.analysis import task_distance as td
from toast_core.errors import InputError


def test_held_out_near_and_shifted_points_far(tmp_path):
    rng = np.random.default_rng(0)
    scale = np.linspace(0.2, 3.0, 16)  # anisotropic: Mahalanobis, not Euclidean, must decide
    train, held = rng.normal(size=(400, 16)) * scale, rng.normal(size=(200, 16)) * scale
    ref = td.fit_reference(train, held, percentile=99)
    assert np.mean(td.distances(ref, held) > ref.threshold) <= 0.011  # 99th percentile of held-out
    fresh = rng.normal(size=(500, 16)) * scale
    assert np.mean(td.distances(ref, fresh) > ref.threshold) < 0.05
    # a shift of 1.5 along the narrowest axis is ~7.5 sd there: far; the same along the widest is not
    narrow, wide = np.zeros((1, 16)), np.zeros((1, 16))
    narrow[0, 0], wide[0, -1] = 1.5, 1.5
    assert td.distances(ref, narrow)[0] > ref.threshold > td.distances(ref, wide)[0]
    back = td.load_reference(td.save_reference(ref, tmp_path / "ref.npz"))
    assert back.threshold == ref.threshold and back.meta == ref.meta
    assert np.allclose(td.distances(back, narrow), td.distances(ref, narrow))


def test_bad_input_is_refused():
    with pytest.raises(InputError):
        td.fit_reference(np.zeros((1, 4)), np.zeros((3, 4)))
    ref = td.fit_reference(np.random.default_rng(1).normal(size=(20, 4)), np.zeros((3, 4)))
    with pytest.raises(InputError):
        td.distances(ref, np.zeros((2, 5)))
    with pytest.raises(InputError):
        td.features(torch.nn.Identity(), torch.zeros(1, 3, 8, 8), (0, 0, 0), (1, 1, 1))  # not uint8


def test_features_are_the_mean_patch_token():
    from toast_core.backbones import create_backbone

    vit = create_backbone("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=0).eval()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    f = td.features(vit, x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), batch=2)
    with torch.no_grad():
        tokens = vit.forward_features((x.float() / 255 - 0.5) / 0.5)
    assert f.shape == (3, vit.embed_dim)
    assert np.allclose(f, tokens[:, vit.num_prefix_tokens:].mean(1).double().numpy(), atol=1e-5)


def test_demo_task_reference_is_computed_once_then_read_from_the_cache(monkeypatch):
    """toast_core.demo.reference: the far-from-task notice's reference of a generated task, fitted with the
    real default backbone at 112 px, cached on disk; the second call reads the file (no backbone needed),
    the task's own held-out images are mostly near, an image of one flat colour is far."""
    from toast_core.data.demo_task import DemoTaskConfig, ensure_demo_task
    from toast_core.demo import reference

    task = ensure_demo_task(DemoTaskConfig.quick())
    path = reference.reference_file(task)
    assert not path.exists()
    ref = reference.task_reference(task)
    assert path.is_file() and ref.meta["image_size"] == reference.REFERENCE_SIDE == 112
    assert np.mean(ref.held_out <= ref.threshold) >= 0.9

    def no_backbone(*args, **kwargs):
        raise AssertionError("the cached reference must not rebuild the backbone")

    monkeypatch.setattr(reference, "frozen_backbone", no_backbone)
    again = reference.task_reference(task)
    np.testing.assert_array_equal(again.mean, ref.mean)
    np.testing.assert_array_equal(again.precision, ref.precision)
    monkeypatch.undo()
    vit = reference.frozen_backbone()
    flat = torch.full((1, 3, 112, 112), 200, dtype=torch.uint8)
    d = td.distances(ref, td.features(vit, flat, reference.IMAGENET_MEAN, reference.IMAGENET_STD))[0]
    assert d > ref.threshold
