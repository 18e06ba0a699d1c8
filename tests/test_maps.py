"""Map kinds: rollout, token norm, Integrated Gradients, labels."""
from __future__ import annotations

import pytest
import torch

import toast_core as tc
from toast_core import maps

from .conftest import tiny_model


def imgs(b=2, seed=0):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_rollout_of_identity_attention_is_uniform_over_nothing_but_cls():
    model = tiny_model("linear")
    res = tc.extract_attention(model, imgs(), full=True)
    # Rollout with residual=1 ignores attention: the CLS row stays on CLS, patches get 0.
    assert torch.allclose(maps.rollout(res, residual=1.0), torch.zeros(2, 4, 4))
    r = maps.rollout(res)
    assert r.shape == (2, 4, 4) and float(r.min()) >= 0
    # Rollout over a single layer with residual 0 equals that layer's CLS map.
    one = maps.rollout(res, start_layer=0, end_layer=0, residual=0.0)
    assert torch.allclose(one, res.cls["main"][0], atol=1e-6)


def test_rollout_requires_full():
    res = tc.extract_attention(tiny_model("linear"), imgs())
    with pytest.raises(ValueError, match="full"):
        maps.rollout(res)


@pytest.mark.parametrize("method", ["vpt-deep", "toast"])
def test_maps_for_every_kind(method):
    model = tiny_model(method)
    for kind in maps.MAP_KINDS:
        m, res = maps.maps_for(model, imgs(), kind)
        assert m.shape == (2, 4, 4), kind
        assert torch.isfinite(m).all() and (float(m.min()) >= 0 or kind in maps.SIGNED_KINDS)
    head0 = maps.compute_map("cls", res, layer=1, head=0)
    assert torch.allclose(head0, res.final("heads")[1][:, 0])


def test_integrated_gradients_completeness():
    model = tiny_model("linear")
    x = imgs(1)
    from captum.attr import IntegratedGradients

    target = model(x).argmax(-1)
    attr, delta = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                       n_steps=64, return_convergence_delta=True)
    assert abs(float(delta)) < 0.05 * abs(float(attr.sum())) + 1e-3
    m = maps.integrated_gradients(model, x, steps=8)
    assert m.shape == (1, 4, 4) and float(m.sum()) > 0


def test_describe_map_labels():
    assert maps.describe_map("cls", -1, None, "top-down", 12) == "CLS attention · layer 12/12 · head mean · top-down pass"
    assert maps.describe_map("integrated_gradients") == "Integrated Gradients"
    # one numbering for people: layers and heads both counted from 1 (the API's indices are 0-based)
    assert maps.describe_map("cls", 0, 0, None, 12) == "CLS attention · layer 1/12 · head 1"


def test_figure_command_counts_heads_from_one():
    from toast_core.commands.figure import _head
    from toast_core.errors import InputError

    assert _head("1") == 0 and _head("6") == 5
    for bad in ("0", "-1", "x"):
        with pytest.raises(InputError):
            _head(bad)
