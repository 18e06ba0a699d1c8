"""TOAST's mechanism, checked on tiny models: the authors' P convention, the least-squares stage 1 and
its diagnostics, and where ξ's gradient comes from."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toast_core.errors import InputError
from toast_core.methods.toast import feedback_operators, select_tokens
from toast_core.training.stage1 import Gram, fit_topdown, stage1_diagnostics, topdown_tensors

from .conftest import tiny_model


def images(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 32, 32, generator=g)


def _random_topdown(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for dec in model.decoders:
            for lin in (dec.linear, dec.linear2):
                w = lin.base.weight if hasattr(lin, "base") else lin.weight
                w.copy_(torch.randn(w.shape, generator=g) * 0.3)
        c = model.top_down_transform.shape[0]
        model.top_down_transform.copy_(torch.eye(c) + 0.5 * torch.randn(c, c, generator=g))  # not symmetric
        model.prompt.copy_(model.run_blocks(images(1)).tokens[0, 1])  # a real token: the gate opens
    return model


@pytest.mark.parametrize("method", ["toast", "toast-lite"])
def test_channel_selection_uses_the_authors_convention(method):
    """z = x̃·P with tokens as rows (z_i = Pᵀ x̃_i), on both the per-token and the folded path."""
    model = _random_topdown(tiny_model(method))
    P = model.top_down_transform.detach()
    assert not torch.allclose(P, P.T)
    tokens = model.run_blocks(images()).tokens
    gated, _ = select_tokens(tokens, model.prompt)
    h = gated @ P  # the authors: x̃ P
    expected = [None] * len(model.decoders)
    for l in range(len(model.decoders) - 1, -1, -1):
        h = model.decoders[l].linear(h)
        expected[l] = model.decoders[l].linear2(h)
    for got, want in zip(model.top_down(tokens), expected):
        torch.testing.assert_close(got, want)
    wrong = gated @ P.T
    assert not torch.allclose(model.decoders[-1].linear2(model.decoders[-1].linear(wrong)), expected[-1], atol=1e-3)
    for op, want in zip(feedback_operators(model.decoders, model.top_down_transform), expected):
        torch.testing.assert_close(gated @ op.T, want, atol=1e-4, rtol=1e-4)


def test_official_checkpoint_p_imports_unchanged(tmp_path):
    """An authors'-layout file with a non-symmetric P: the imported model's top-down signal is the one
    their code computes from x̃·P (the import does not transpose P)."""
    from toast_core.io.importers import import_official_toast

    from .test_importers import KW, TINY, official_file

    path, state = official_file(tmp_path)
    g = torch.Generator().manual_seed(5)
    P = torch.eye(32) + 0.5 * torch.randn(32, 32, generator=g)
    state["top_down_transform"] = P
    torch.save({"model": state}, path)
    model = import_official_toast(path, backbone=TINY["backbone"], img_size=32, **KW)
    assert torch.equal(model.top_down_transform, P)
    tokens = model.run_blocks(images(2)).tokens
    gated, _ = select_tokens(tokens, state["prompt"])
    h = gated @ P
    for l in range(2, -1, -1):
        h = h @ state[f"decoders.{l}.linear.weight"].T
    torch.testing.assert_close(model.top_down(tokens)[0], h @ state["decoders.0.linear2.weight"].T)


def test_gram_fit_is_the_least_squares_minimiser_and_r2_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g)
    w_true = torch.randn(4, 6, generator=g)
    y = x @ w_true.T + 0.3 * torch.randn(500, 4, generator=g) + 2.0
    gram = Gram.empty(6, 4)
    gram.add(x[:200], y[:200])
    gram.add(x[200:], y[200:])
    w = gram.solve(ridge=0.0)
    lstsq = torch.linalg.lstsq(x.double(), y.double()).solution.T.float()
    torch.testing.assert_close(w, lstsq, atol=1e-4, rtol=1e-4)
    pred = x @ w.T
    direct = 1 - ((pred - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert gram.r2(w) == pytest.approx(float(direct), abs=1e-5)
    # A worse map has a lower R²; predicting the mean has R² = 0.
    assert gram.r2(w * 0.5) < gram.r2(w)


def test_fit_topdown_inverts_the_blocks_and_scales_td_to_the_normalised_input():
    model = tiny_model("toast")
    train = images(b=24, seed=1)
    held_out = images(b=12, seed=2)
    before = stage1_diagnostics(model, held_out)  # random decoders reconstruct nothing
    fitted = fit_topdown(model, train, td_gain=2.0, ridge=1e-4)
    diag = stage1_diagnostics(model, held_out, fitted, td_gain=2.0)
    assert all(r["r2_td"] > 0 for r in diag["layers"])  # td / gain tracks norm1(in) − β
    for b, a in zip(before["layers"], diag["layers"]):
        assert b["r2_reconstruction"] < 0.2
        assert a["r2_reconstruction"] > 0.5 > b["r2_reconstruction"]
    # B_l is fitted to td_gain·(norm1(in) − β): the value term is near td_gain × the value at gate 1.
    ratios = [r["value_ratio"] for r in diag["layers"]]
    assert all(0.5 < r < 3.0 for r in ratios), ratios
    assert 0 < diag["gate"]["open_fraction"] < 1 and diag["gate"]["mean"] > 0.05  # ξ starts open on part
    # ξ = the patch tokens' first principal component over the fitting images, orthogonal to their
    # mean, signed to agree with mean CLS − mean patch (which is itself the "cls-minus-patch" start).
    with torch.no_grad():
        tok = model.run_blocks(train).tokens
    patches = tok[:, 1:].reshape(-1, tok.shape[-1]).double()
    diff = tok[:, 0].mean(0).double() - patches.mean(0)
    _, _, v = torch.linalg.svd(patches - patches.mean(0), full_matrices=False)
    mu = patches.mean(0) / patches.mean(0).norm()
    pc1 = v[0] - (v[0] @ mu) * mu
    pc1 = pc1 / pc1.norm() * torch.sign(pc1 @ diff)
    assert float(fitted["prompt"].double() @ pc1) == pytest.approx(1.0, abs=1e-4)
    assert float(fitted["prompt"].double() @ mu) == pytest.approx(0.0, abs=1e-5)  # the mean token sits at cos 0
    legacy = fit_topdown(model, train, td_gain=2.0, ridge=1e-4, xi_init="cls-minus-patch")["prompt"]
    torch.testing.assert_close(legacy, (diff / diff.norm()).float(), atol=1e-5, rtol=1e-4)
    with pytest.raises(InputError):
        fit_topdown(model, train, xi_init="randn")
    # Diagnostics match a direct computation for one layer.
    with torch.no_grad():
        out = model.run_blocks(held_out, collect_io=True)
        x_in, x_out = out.block_io[1]
        pred = x_out @ fitted["decoders.1.linear.weight"].T
        y = x_in.reshape(-1, x_in.shape[-1])
        direct = 1 - ((pred.reshape(-1, y.shape[-1]) - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert diag["layers"][1]["r2_reconstruction"] == pytest.approx(float(direct), abs=1e-4)
    # topdown_tensors reads a model's own module back.
    with torch.no_grad():
        for k, v in fitted.items():
            model.state_dict()[k].copy_(v)
    for k, v in topdown_tensors(model).items():
        torch.testing.assert_close(v, fitted[k])


def test_xi_gets_gradient_only_from_tokens_whose_gate_is_open():
    model = _random_topdown(tiny_model("toast"))
    x = images()
    tokens = model.run_blocks(x).tokens.detach()
    xi = model.prompt
    s = F.cosine_similarity(tokens, xi.detach().view(1, 1, -1), dim=-1)
    open_, shut = s > 0, s <= 0
    assert open_.any() and shut.any()

    probe = torch.randn(tokens.shape[-1], generator=torch.Generator().manual_seed(3))

    def grad_with(weights):
        model.zero_grad()
        gated, _ = select_tokens(tokens, xi)
        ((gated @ probe) * weights).sum().backward()
        return xi.grad.clone()

    g_open = grad_with(open_.float())
    g_shut = grad_with(shut.float())
    assert g_open.norm() > 1e-3
    assert g_shut.norm() == 0  # clamp(cos, 0, 1) passes nothing back from shut tokens
    # Through the whole model, the loss reaches ξ (the gate is open on some tokens).
    model.zero_grad()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert model.prompt.grad is not None and model.prompt.grad.norm() > 0


def test_steering_table_ratios_from_rows():
    """The analysis's TOAST table: gate share over the area share, and top-down over bottom-up target
    share at the last layer, as ratios of means over images."""
    from toast_core.analysis.steering import ratio_ci, steering_markdown, steering_table

    assert ratio_ci([1, 2, 3], [1, 1, 1], n_boot=200)[0] == pytest.approx(2.0)
    mean, lo, hi = ratio_ci([2, 4, 6, 8], [1, 2, 3, 4], n_boot=200)
    assert mean == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    rows = []
    for i in range(4):
        for pass_name, share in (("bottom-up", 0.1), ("top-down", 0.3 + 0.02 * i)):
            for layer in (0, 11):
                rows.append({"image_id": i, "method": "toast", "layer": layer, "kind": "cls", "pass": pass_name,
                             "energy_target": share if layer == 11 else 0.5, "correct": float(i % 2),
                             "gate_energy_target": 0.2, "target_area": 0.05, "gate_energy_distractors": 0.1,
                             "distractor_area": 0.1})
        rows.append({**rows[-1], "method": "lora", "pass": "main"})  # one pass: not in the table
    (t,) = steering_table(rows, n_boot=100)
    assert t["method"] == "toast" and t["n"] == 4 and t["last_layer"] == 11
    assert t["gate_target_x_uniform"][0] == pytest.approx(4.0)
    assert t["gate_distractors_x_uniform"][0] == pytest.approx(1.0)
    assert t["td_over_bu_cls"][0] == pytest.approx(np.mean([0.3, 0.32, 0.34, 0.36]) / 0.1)
    assert t["accuracy"][0] == pytest.approx(0.5)
    assert "| toast |" in steering_markdown(rows, n_boot=100)
