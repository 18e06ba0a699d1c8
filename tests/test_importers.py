"""Real-world checkpoint paths: timm pretrained from a local file, a plain timm/DeiT file as a
backbone, and the TOAST authors' published layout (a synthetic file of that layout)."""
from __future__ import annotations

import pickle

import pytest
import timm
import torch

import toast_core as tc
from toast_core.errors import CheckpointError
from toast_core.io.importers import import_official_toast

from .conftest import TINY

KW = TINY["backbone_kwargs"]


def plain_timm_state(seed=1, **overrides):
    torch.manual_seed(seed)
    m = timm.create_model(TINY["backbone"], pretrained=False, num_classes=7, img_size=32, **{**KW, **overrides})
    for p in m.parameters():  # non-trivial values everywhere (timm zero-inits some biases)
        p.data.normal_(0, 0.05)
    return m.state_dict()


def test_timm_pretrained_through_a_local_file(tmp_path):
    """pretrained=True goes through timm's own loader; pointing it at a local file works offline."""
    state = plain_timm_state()
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    vit = tc.create_backbone(TINY["backbone"], pretrained=True, num_classes=7, img_size=32,
                             pretrained_cfg_overlay=dict(file=str(path)), **KW)
    assert torch.equal(vit.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])


def test_plain_timm_file_as_backbone(tmp_path):
    state = plain_timm_state()
    path = tmp_path / "deit.pth"
    torch.save({"model": state}, path)  # DeiT's release layout
    model = tc.build_model("lora", num_classes=3, pretrained=str(path), **TINY)
    assert torch.equal(model.vit.blocks[0].attn.qkv.base.weight, state["blocks.0.attn.qkv.weight"])
    assert model.vit.head.weight.shape == (3, 32)  # the 7-class head of the file is skipped


def test_backbone_file_that_does_not_fit(tmp_path):
    state = plain_timm_state(embed_dim=48, num_heads=2)
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="other shapes"):
        tc.build_model("linear", num_classes=3, pretrained=str(path), **TINY)
    state = {k: v for k, v in plain_timm_state().items() if not k.startswith("blocks.2.")}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing"):
        tc.build_model("linear", num_classes=3, pretrained=str(path), **TINY)


def official_file(tmp_path, blocks=3, dim=32):
    state = plain_timm_state()
    g = torch.Generator().manual_seed(3)
    for l in range(blocks):
        state[f"decoders.{l}.linear.weight"] = torch.randn(dim, dim, generator=g) * 0.1
        state[f"decoders.{l}.linear2.weight"] = torch.randn(dim, dim, generator=g) * 0.1
    state["prompt"] = torch.randn(dim, generator=g)
    state["top_down_transform"] = torch.eye(dim)
    path = tmp_path / "toast_official.pth"
    torch.save({"model": state, "epoch": 99, "args": {"lr": 0.01}}, path)
    return path, state


def test_official_toast_layout_imports_and_behaves_as_trained(tmp_path):
    path, state = official_file(tmp_path)
    model = import_official_toast(path, backbone=TINY["backbone"], img_size=32, **KW)
    assert model.config.official and model.vit.head.out_features == 7
    assert torch.equal(model.decoders[2].linear2.weight, state["decoders.2.linear2.weight"])
    assert torch.equal(model.prompt, state["prompt"])
    x = torch.randn(2, 3, 32, 32)
    res = tc.extract_attention(model, x)
    assert res.passes == ("bottom-up", "top-down")
    # Official mode: td goes through the full qkv (bias included) — check against a manual computation.
    blk = model.vit.blocks[0].attn
    td = torch.randn(2, 17, 32)
    v_official = blk.value_projection(td, official=True)
    v_manual = (td @ state["blocks.0.attn.qkv.weight"][64:].t() + state["blocks.0.attn.qkv.bias"][64:])
    assert torch.allclose(v_official, v_manual.reshape(2, 17, 2, 16).transpose(1, 2), atol=1e-6)


def test_official_layout_mismatch_and_non_toast_files(tmp_path):
    path, _ = official_file(tmp_path, blocks=2)
    with pytest.raises(CheckpointError, match="3 blocks"):
        import_official_toast(path, backbone=TINY["backbone"], img_size=32, **KW)
    plain = tmp_path / "plain.pth"
    torch.save(plain_timm_state(), plain)
    with pytest.raises(CheckpointError, match="not a TOAST checkpoint"):
        import_official_toast(plain, backbone=TINY["backbone"], img_size=32, **KW)


def test_official_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"prompt": Evil()}}, f)
    with pytest.raises(CheckpointError):
        import_official_toast(path, backbone=TINY["backbone"], img_size=32, **KW)
    assert not marker.exists()
