"""Invariants of the core library, run over every registered method on tiny models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import toast_core as tc
from toast_core.attention import SteerableAttention, _stack
from toast_core.methods.base import register

from .conftest import TINY, TINY_REG, tiny_model

METHODS = ["linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite"]
# Trainable-parameter formulas of toast-method.md for the tiny backbone (L blocks, width C, K classes).
L, C, K, R = 3, 32, 5, 4
HEAD = C * K + K
FORMULAS = {
    "linear": HEAD,
    "lora": L * 4 * R * C + HEAD,  # one (A: r x C, B: 3C x r) pair per block on the fused qkv
    "vpt-shallow": 10 * C + HEAD,
    "vpt-deep": L * 10 * C + HEAD,
    "toast": 2 * L * C * C + C + HEAD,
    "toast-lite": L * 2 * (2 * R * C) + C + C * C + HEAD,
}


def images(b=2, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g)


def test_registry_lists_all_methods_and_rejects_duplicates():
    assert tc.available_methods() == METHODS
    with pytest.raises(ValueError, match="already registered"):
        register("toast")(type("X", (tc.TransferModel,), {}))
    with pytest.raises(ValueError, match="unknown method"):
        tc.build_model("nope", pretrained=False, **TINY)
    with pytest.raises(ValueError, match="unknown option"):
        tc.build_model("lora", pretrained=False, rnk=3, **TINY)


@pytest.mark.parametrize("method", METHODS)
def test_forward_shapes_and_attention_layout(method):
    model = tiny_model(method)
    x = images()
    logits = model(x)
    assert logits.shape == (2, K)
    res = tc.extract_attention(model, x)
    n_pass = 2 if method.startswith("toast") else 1
    assert len(res.passes) == n_pass
    assert res.grid == (4, 4)
    assert res.final("cls").shape == (L, 2, 4, 4)
    assert res.final("heads").shape == (L, 2, 2, 4, 4)
    assert res.final("token_norm").shape == (L, 2, 4, 4)
    # Patch mass + prefix mass + prompt mass = 1 (rows of a softmax).
    total = res.final("heads").sum((-1, -2)).mean(2) + res.final("prefix_mass") + res.final("prompt_mass")
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    assert torch.allclose(res.logits, logits, atol=1e-5)
    assert len(_stack()) == 0


@pytest.mark.parametrize("method", METHODS)
def test_trainable_counts_match_formulas(method):
    model = tiny_model(method)
    counts = model.parameter_counts()
    if method == "finetune":
        assert counts["trainable"] == counts["total"]
    else:
        assert counts["trainable"] == FORMULAS[method]
    assert 0 < counts["share"] <= 1


def test_lora_qv_option_counts_and_slices():
    model = tiny_model("lora", target="qv")
    assert model.parameter_counts()["trainable"] == L * 2 * (R * C + C * R) + HEAD
    qkv = model.vit.blocks[0].attn.qkv
    assert qkv.out_slices == [(0, C), (2 * C, 3 * C)]


@pytest.mark.parametrize("method", [m for m in METHODS if m != "finetune"])
def test_training_step_leaves_backbone_unchanged(method):
    model = tiny_model(method).train()
    before = {k: v.clone() for k, v in model.vit.named_parameters() if not k.startswith("head.")
              and "lora_" not in k}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    logits, extra = model.training_outputs(images(), stage="pretune")
    loss = F.cross_entropy(logits, torch.tensor([0, 1])) + sum(extra.values())
    loss.backward()
    opt.step()
    after = dict(model.vit.named_parameters())
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{method} changed frozen {k}"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    if method.startswith("toast"):
        assert "reconstruction" in extra


def test_finetune_step_changes_backbone():
    model = tiny_model("finetune").train()
    w = model.vit.blocks[0].attn.qkv.weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(images()), torch.tensor([0, 1])).backward()
    opt.step()
    assert not torch.equal(w, model.vit.blocks[0].attn.qkv.weight)


def manual_attention(attn: SteerableAttention, x: torch.Tensor) -> torch.Tensor:
    B, N, _ = x.shape
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(B, N, 3, attn.num_heads, attn.head_dim)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4)
    return torch.softmax(q @ k.transpose(-1, -2) / attn.head_dim ** 0.5, dim=-1)


@pytest.mark.parametrize("full", [False, True])
def test_recorded_maps_equal_manual_softmax(full):
    model = tiny_model("linear")
    x = images()
    inputs = []
    hook = model.vit.blocks[1].attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    try:
        res = tc.extract_attention(model, x, full=full)
    finally:
        hook.remove()
    ref = manual_attention(model.vit.blocks[1].attn, inputs[0])  # (B, H, N, N)
    assert torch.allclose(ref.sum(-1), torch.ones(2, 2, 17), atol=1e-5)  # rows sum to 1
    assert torch.allclose(res.heads["main"][1], ref[:, :, 0, 1:].reshape(2, 2, 4, 4), atol=1e-5)
    if full:
        assert torch.allclose(res.full["main"][1], ref, atol=1e-5)
        assert torch.allclose(res.full["main"].sum(-1), torch.ones(L, 2, 2, 17), atol=1e-5)


def test_token_norm_recording_is_optional():
    model, x = tiny_model("linear"), images()
    with_norms, without = tc.extract_attention(model, x), tc.extract_attention(model, x, token_norm=False)
    assert with_norms.token_norm["main"].shape == (L, 2, 4, 4) and without.token_norm == {}
    torch.testing.assert_close(with_norms.cls, without.cls)
    torch.testing.assert_close(with_norms.logits, without.logits)


def test_recorded_logits_become_weights_per_layer_scale():
    """Logits recorded with different scales per layer (or as weights) are normalised layer by layer."""
    from toast_core.recording import _Pass, _weights
    logits = torch.randn(3, 2, 2, 1, 17)
    p = _Pass("main", attn=list(logits), scales=[0.5, 0.25, None])
    w = _weights(p)
    torch.testing.assert_close(w[0], (logits[0] * 0.5).softmax(-1))
    torch.testing.assert_close(w[1], (logits[1] * 0.25).softmax(-1))
    torch.testing.assert_close(w[2], logits[2])  # already weights: kept as they are
    same = _weights(_Pass("main", attn=list(logits), scales=[0.5] * 3))
    torch.testing.assert_close(same, (logits * 0.5).softmax(-1))


def test_fused_attention_stays_on_and_outputs_match():
    model = tiny_model("linear")
    assert all(b.attn.fused_attn for b in model.vit.blocks)
    x = images()
    plain = model(x)
    res = tc.extract_attention(model, x, full=True)  # unfused path while recording
    assert torch.allclose(plain, res.logits, atol=1e-5)
    assert all(b.attn.fused_attn for b in model.vit.blocks)


@pytest.mark.parametrize("target", ["qkv", "qv"])
def test_lora_at_init_equals_backbone(target):
    base = tiny_model("linear")
    lora = tiny_model("lora", target=target)
    # Same seed → same backbone; LoRA's B is zero so outputs are identical.
    x = images()
    assert torch.equal(base(x), lora(x))


def test_toast_zero_feedback_equals_backbone():
    base = tiny_model("linear")
    toast = tiny_model("toast", head_bias_prior=False)
    toast.vit.load_state_dict(base.vit.state_dict())
    for dec in toast.decoders:
        torch.nn.init.zeros_(dec.linear2.weight)
    x = images()
    assert torch.allclose(base(x), toast(x), atol=1e-6)
    res = tc.extract_attention(toast, x)
    assert torch.allclose(res.cls["bottom-up"], res.cls["top-down"], atol=1e-6)
    assert torch.allclose(res.td_norm, torch.zeros_like(res.td_norm))


@pytest.mark.parametrize("method", ["toast", "toast-lite"])
def test_toast_passes(method):
    model = tiny_model(method)
    for dec in model.decoders:  # make the feedback strong enough to matter
        torch.nn.init.normal_(dec.linear.base.weight if hasattr(dec.linear, "base") else dec.linear.weight, std=0.5)
        torch.nn.init.normal_(dec.linear2.base.weight if hasattr(dec.linear2, "base") else dec.linear2.weight, std=0.5)
    model.prompt.data = model.run_blocks(images(1)).tokens[0, 1]  # ξ = a real token, so the gate opens
    res = tc.extract_attention(model, images())
    assert res.passes == ("bottom-up", "top-down")
    # Layer 0's Q and K see the same input in both passes.
    assert torch.allclose(res.heads["bottom-up"][0], res.heads["top-down"][0], atol=1e-6)
    assert not torch.allclose(res.heads["bottom-up"][-1], res.heads["top-down"][-1], atol=1e-4)
    assert res.gate.shape == (2, 4, 4) and float(res.gate.min()) >= 0 and float(res.gate.max()) <= 1
    assert res.td_norm.shape == (L, 2) and float(res.td_norm.min()) > 0
    # Steering: scale 0 gives the bottom-up prediction.
    zero = model(images(), td_scale=0.0)
    bottom = model.classify(model.run_blocks(images()).tokens)
    assert torch.allclose(zero, bottom, atol=1e-5)


def test_toast_official_mode_adds_value_bias_twice():
    model = tiny_model("toast", official=True)
    for dec, blk in zip(model.decoders, model.vit.blocks):
        torch.nn.init.zeros_(dec.linear2.weight)  # td = 0: only the extra bias remains
        torch.nn.init.normal_(blk.attn.qkv.bias, std=0.5)  # timm initialises biases at zero
    x = images()
    res = tc.extract_attention(model, x)
    assert torch.allclose(res.heads["bottom-up"][0], res.heads["top-down"][0], atol=1e-6)
    model.config.official = False
    assert not torch.allclose(model(x), res.logits, atol=1e-6)


def _strong_feedback(model):
    for dec in model.decoders:  # make the feedback strong enough to matter
        for lin in (dec.linear, dec.linear2):
            torch.nn.init.normal_(lin.base.weight if hasattr(lin, "base") else lin.weight, std=0.5)
        if hasattr(dec.linear2, "lora_B"):  # a non-zero LoRA update, so the effective weight is used
            torch.nn.init.normal_(dec.linear2.lora_B[0], std=0.5)
    for blk in model.vit.blocks:
        torch.nn.init.normal_(blk.attn.qkv.bias, std=0.5)  # so the authors' extra value bias shows
    model.prompt.data = model.run_blocks(images(1)).tokens[0, 1]
    return model


@pytest.mark.parametrize("method,official", [("toast", False), ("toast", True), ("toast-lite", False)])
def test_toast_folded_value_projection_equals_per_token(method, official):
    """(W_v B_l A_l … P)·x̃, formed once, gives the same values, logits and gradients as the per-token path."""
    from toast_core.methods.toast import fold_pays
    model = _strong_feedback(tiny_model(method, official=official))
    x = images(b=5)
    tokens = model.run_blocks(x).tokens
    assert fold_pays(*tokens.shape)  # 5 images x 17 tokens > 2 x 32 channels
    for scale in (1.0, 0.5):
        values = model.value_terms(tokens, td_scale=scale)
        assert model.folds(tokens) and values[0].shape == (5, 2, 17, C // 2)
        td = [t * scale for t in model.top_down(tokens)]
        per_token_values = [blk.attn.value_projection(t, official) for blk, t in zip(model.vit.blocks, td)]
        folded = model.classify(model.run_blocks(x, values=values).tokens)
        per_token = model.classify(model.run_blocks(x, values=per_token_values).tokens)
        assert not torch.allclose(per_token, model(x, td_scale=0.0), atol=1e-3)  # steering matters here
        torch.testing.assert_close(folded, per_token, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x, td_scale=scale), folded)
    # The recorder needs td itself, so a recorded forward takes the per-token path: same logits.
    torch.testing.assert_close(tc.extract_attention(model, x).logits, model(x), atol=1e-5, rtol=1e-5)
    # Training through the fold: the same gradients for every trained parameter.
    grads = []
    for fold in (True, False):
        model.zero_grad()
        if fold:
            loss = model(x).logsumexp(-1).sum()
        else:
            td = model.top_down(model.run_blocks(x).tokens)
            values = [blk.attn.value_projection(t, official) for blk, t in zip(model.vit.blocks, td)]
            loss = model.classify(model.run_blocks(x, values=values).tokens).logsumexp(-1).sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 3
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-4, msg=name)


def test_toast_fold_in_bf16_is_as_accurate_as_the_per_token_path(monkeypatch):
    """Under bf16 autocast the folded operators round differently; their error stays that of the per-token path."""
    import toast_core.methods.toast as toast_module
    model = _strong_feedback(tiny_model("toast"))
    x = images(b=8)

    def run(fold: bool, bf16: bool):
        monkeypatch.setattr(toast_module, "fold_pays", (lambda b, n, c: b * n > 2 * c) if fold else (lambda *a: False))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(x).float()

    ref = run(fold=False, bf16=False)
    err_per_token = (run(fold=False, bf16=True) - ref).norm() / ref.norm()
    err_folded = (run(fold=True, bf16=True) - ref).norm() / ref.norm()
    print(f"relative error in bf16: per-token {err_per_token:.2e}, folded {err_folded:.2e}")
    assert 0 < err_folded < max(1.5 * err_per_token, 1e-3)


def test_toast_fold_only_when_it_saves_work():
    from toast_core.methods.toast import fold_pays
    assert fold_pays(8, 257, 384) and fold_pays(8, 197, 768) and not fold_pays(1, 257, 384)
    model = tiny_model("toast")
    tokens = model.run_blocks(images(b=3)).tokens  # 3 x 17 tokens < 2 x 32 channels
    values = model.value_terms(tokens)
    assert not model.folds(tokens) and values[0].shape == (3, 2, 17, C // 2)


def test_vpt_maps_exclude_prompts_and_report_their_mass():
    for method, n in (("vpt-shallow", 10), ("vpt-deep", 10)):
        model = tiny_model(method)
        res = tc.extract_attention(model, images(), full=True)
        assert res.num_prompt_tokens == n
        assert res.final("cls").shape == (L, 2, 4, 4)
        assert res.full["main"].shape[-1] == 1 + n + 16
        assert float(res.prompt_mass["main"].min()) > 0


def test_recorder_removed_after_exception():
    model = tiny_model("toast")
    with pytest.raises(RuntimeError):
        tc.extract_attention(model, torch.randn(2, 5, 32, 32))  # wrong channel count
    assert len(_stack()) == 0
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    x = images()
    assert torch.allclose(model(x), model(x))


def test_shared_model_left_unchanged_by_recording():
    model = tiny_model("vpt-deep")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [b.attn.fused_attn for b in model.vit.blocks]
    tc.extract_attention(model, images(), full=True)
    tc.extract_attention(model, images(), keep_grad=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert flags == [b.attn.fused_attn for b in model.vit.blocks]
    assert not model.training


def test_non_square_input_and_register_tokens():
    model = tiny_model("toast", spec=TINY_REG)
    res = tc.extract_attention(model, images(h=28, w=42))
    assert res.num_prefix_tokens == 5  # CLS + 4 registers
    assert res.grid == (4, 6)
    assert res.final("cls").shape == (2, 2, 4, 6)
    assert float(res.final("prefix_mass").min()) > 0
    model = tiny_model("vpt-deep", spec=TINY_REG, num_prompts=3)
    res = tc.extract_attention(model, images(h=42, w=28))
    assert res.grid == (6, 4) and res.num_prompt_tokens == 3


def test_threads_record_independently():
    import threading

    model = tiny_model("toast")
    results, errors = {}, []

    def work(i):
        try:
            results[i] = tc.extract_attention(model, images(seed=i)).final("cls")
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for i in range(4):
        assert torch.allclose(results[i], tc.extract_attention(model, images(seed=i)).final("cls"), atol=1e-6)
