"""Integrated Gradients on Compare (issue 20): a chosen target class, a signed map, and compare()
passing both through (tiny random models, small images)."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_model
from toast_core import compare as cmp
from toast_core.errors import InputError
from toast_core.maps import integrated_gradients


def test_signed_ig_is_complete_and_bounded_by_the_unsigned_map():
    torch.manual_seed(0)
    model = tiny_model("linear").eval()
    x = torch.randn(1, 3, 32, 32)
    target = torch.tensor([2])
    signed = integrated_gradients(model, x, target=target, steps=64, signed=True)
    unsigned = integrated_gradients(model, x, target=target, steps=64)
    assert (signed < 0).any() and (signed > 0).any()
    assert torch.all(signed.abs() <= unsigned + 1e-7)  # |sum over channels, mean| <= mean of sum of |.|
    # completeness: the attributions add up to the target logit's change from the zero baseline
    with torch.no_grad():
        gap = (model(x)[0, 2] - model(torch.zeros_like(x))[0, 2]).item()
    pixels_per_patch = x.shape[-1] * x.shape[-2] / signed[0].numel()
    assert signed.sum().item() * pixels_per_patch == pytest.approx(gap, rel=0.05, abs=1e-3)


def test_compare_explains_the_chosen_class():
    entry = cmp.load_entry("tiny:linear", "cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    probs = cmp.record(entry, image).probs
    other = entry.class_names[int(np.argsort(probs)[0])]  # the least probable class: not the prediction
    pred = cmp.compare([entry], image, kind="integrated_gradients", ig_steps=4)[0]
    chosen = cmp.compare([entry], image, kind="integrated_gradients", ig_steps=4, target=other, signed=True)[0]
    assert "predicted class" in pred.label and f"class {other}" in chosen.label and "signed" in chosen.label
    assert not np.allclose(pred.map, chosen.map) and chosen.map.min() < 0 <= pred.map.min()
    with pytest.raises(InputError):
        cmp.compare([entry], image, kind="integrated_gradients", ig_steps=4, target="no such class")
