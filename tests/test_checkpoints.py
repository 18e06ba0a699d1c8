"""This project's checkpoints: round trips, small partial saves, and clear errors for misfits."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import toast_core as tc
from toast_core.io.checkpoints import (
    META_KEY,
    checkpoint_paths,
    load_checkpoint,
    load_checkpoint_into,
    read_checkpoint_info,
    save_checkpoint,
)
from toast_core.errors import CheckpointError
from toast_core.io.safe_io import read_safetensors_metadata, save_state_dict

from .conftest import TINY, tiny_model

METHODS = ["linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(b=3, seed=1):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _perturb(model, seed=0):
    """Change every trainable tensor (and TOAST's frozen P), as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad or name == "top_down_transform":
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def backbone_file(tmp_path):
    """A local weights file for the tiny backbone (so partial checkpoints can be rebuilt)."""
    torch.manual_seed(123)
    vit = tc.create_backbone(TINY["backbone"], img_size=TINY["img_size"], **TINY["backbone_kwargs"])
    path = tmp_path / "tiny_backbone.safetensors"
    save_state_dict({k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}, path)
    return path


def _file_model(method, path, num_classes=5, **config):
    torch.manual_seed(0)
    return tc.build_model(method, num_classes=num_classes, pretrained=str(path), **TINY, **config).eval()


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_random_backbone_is_exact(method, tmp_path):
    model = _perturb(tiny_model(method))
    x = _images()
    save_checkpoint(model, tmp_path / "ckpt", {"classes": [f"c{i}" for i in range(5)]})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded) is type(model)
    assert torch.equal(loaded(x), model(x))
    info = read_checkpoint_info(tmp_path / "ckpt")
    assert info["saved"] == "full"  # random backbone weights cannot be rebuilt: everything is saved
    assert info["classes"][4] == "c4" and info["method"] == method
    assert (tmp_path / "ckpt" / "config.json").is_file()


@pytest.mark.parametrize("method", ["linear", "lora", "vpt-deep", "toast", "toast-lite"])
def test_frozen_backbone_checkpoints_hold_only_the_method_parts(method, backbone_file, tmp_path):
    model = _perturb(_file_model(method, backbone_file))
    x = _images()
    weights = save_checkpoint(model, tmp_path / f"{method}.safetensors")
    info = read_checkpoint_info(weights)
    assert info["saved"] == "partial" and info["backbone_weights"]["source"] == "file"
    saved = load_file(str(weights))
    assert not any(k.startswith("vit.blocks.") and "lora_" not in k for k in saved)  # no frozen backbone tensors
    assert set(k for k in saved if k.startswith("vit.head.")) == {"vit.head.weight", "vit.head.bias"}
    if method == "toast":
        assert "top_down_transform" in saved  # frozen in stage 2 but pre-tuned: it must travel
    if method == "toast-lite":
        assert "decoders.0.linear.base.weight" in saved
    loaded = load_checkpoint(weights)
    assert torch.equal(loaded(x), model(x))
    assert checkpoint_paths(weights)[1].name == f"{method}.json"


def test_finetune_with_file_backbone_saves_everything(backbone_file, tmp_path):
    model = _perturb(_file_model("finetune", backbone_file))
    save_checkpoint(model, tmp_path / "ft")
    assert read_checkpoint_info(tmp_path / "ft")["saved"] == "full"
    assert torch.equal(load_checkpoint(tmp_path / "ft")(_images()), model(_images()))


def test_changed_backbone_weights_are_refused(backbone_file, tmp_path):
    model = _perturb(_file_model("lora", backbone_file))
    save_checkpoint(model, tmp_path / "ckpt")
    state = load_file(str(backbone_file))
    state["blocks.0.attn.qkv.weight"] += 0.01
    save_file(state, str(backbone_file))
    with pytest.raises(CheckpointError, match="backbone weights differ"):
        load_checkpoint(tmp_path / "ckpt")


def test_missing_backbone_file_is_named(backbone_file, tmp_path):
    save_checkpoint(_file_model("linear", backbone_file), tmp_path / "ckpt")
    backbone_file.unlink()
    with pytest.raises(CheckpointError, match="needs its backbone weights file .*tiny_backbone"):
        load_checkpoint(tmp_path / "ckpt")


def test_load_into_a_model_of_another_shape_says_what_differs(tmp_path):
    save_checkpoint(_perturb(tiny_model("lora", num_classes=5)), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"num_classes: checkpoint 5, model 7"):
        load_checkpoint_into(tiny_model("lora", num_classes=7), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"method: checkpoint 'lora', model 'linear'"):
        load_checkpoint_into(tiny_model("linear"), tmp_path / "ckpt")
    other = tc.build_model("lora", num_classes=5, pretrained=False, backbone="vit_small_patch14_dinov2", img_size=28,
                           backbone_kwargs=dict(patch_size=7, depth=2, embed_dim=24, num_heads=3))
    with pytest.raises(CheckpointError, match=r"backbone: checkpoint 'vit_tiny_patch16_224', model 'vit_small_patch14_dinov2'"):
        load_checkpoint_into(other, tmp_path / "ckpt")
    fresh = tiny_model("lora")
    load_checkpoint_into(fresh, tmp_path / "ckpt")  # the same spec loads
    assert torch.equal(fresh(_images()), load_checkpoint(tmp_path / "ckpt")(_images()))


def _rewrite(weights, fn):
    """Rewrite a checkpoint's tensors with ``fn`` keeping its header config."""
    meta = read_safetensors_metadata(weights)
    tensors = fn(load_file(str(weights)))
    save_file(tensors, str(weights), metadata=meta)


def test_missing_keys_are_listed(tmp_path):
    weights = save_checkpoint(tiny_model("toast"), tmp_path / "ckpt")
    _rewrite(weights, lambda t: {k: v for k, v in t.items() if k != "decoders.1.linear.weight"})
    with pytest.raises(CheckpointError, match=r"1 missing \(e\.g\. decoders\.1\.linear\.weight\)"):
        load_checkpoint(tmp_path / "ckpt")


def test_unexpected_keys_and_other_head_size_are_explained(tmp_path):
    weights = save_checkpoint(tiny_model("linear"), tmp_path / "ckpt")
    _rewrite(weights, lambda t: {**t, "extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"1 unexpected \(e\.g\. extra\.weight\)"):
        load_checkpoint(tmp_path / "ckpt")

    def bigger_head(t):
        t["vit.head.weight"] = torch.zeros(9, 32)
        t["vit.head.bias"] = torch.zeros(9)
        return t

    _rewrite(weights, lambda t: {k: v for k, v in bigger_head(t).items() if k != "extra.weight"})
    with pytest.raises(CheckpointError, match="another number of classes"):
        load_checkpoint(tmp_path / "ckpt")


def test_info_without_loading_weights_and_clear_errors_for_non_checkpoints(tmp_path):
    weights = save_checkpoint(tiny_model("vpt-shallow"), tmp_path / "ckpt", {"metrics": {"test_accuracy": 0.5}})
    info = read_checkpoint_info(tmp_path / "ckpt" / "config.json")
    assert info["metrics"]["test_accuracy"] == 0.5 and info["parameters"]["share"] < 1
    assert info["versions"]["torch"] == torch.__version__ and info["file_size"] == weights.stat().st_size
    assert json.loads(read_safetensors_metadata(weights)[META_KEY])["method"] == "vpt-shallow"
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not a toast_core checkpoint"):
        read_checkpoint_info(plain)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        read_checkpoint_info(tmp_path / "nothing")


def test_default_backbone_checkpoint_is_small_and_verified(tmp_path):
    """The real offline backbone: only the head is saved; its weights' sha256 is checked on load."""
    torch.manual_seed(0)
    model = _perturb(tc.build_model("linear", num_classes=3, img_size=56).eval())
    weights = save_checkpoint(model, tmp_path / "lin")
    info = read_checkpoint_info(weights)
    assert info["saved"] == "partial" and info["backbone_weights"]["source"] == "default"
    assert len(info["backbone_weights"]["sha256"]) == 64
    assert weights.stat().st_size < 20_000  # a 3-class head on 384 features
    x = torch.randn(2, 3, 56, 56)
    assert torch.equal(load_checkpoint(weights)(x), model(x))
    cfg = json.loads(read_safetensors_metadata(weights)[META_KEY])
    cfg["backbone_weights"]["sha256"] = "0" * 64
    _rewrite(weights, lambda t: t)
    save_file(load_file(str(weights)), str(weights), metadata={META_KEY: json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="backbone weights differ"):
        load_checkpoint(weights)
