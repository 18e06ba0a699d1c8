"""A LoRA adapter saved by Hugging Face PEFT itself for a timm ViT loads as the project's ``lora`` method
and gives PEFT's logits; configurations the project's LoRA cannot represent are refused by name."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

import toast_core as tc
from toast_core.errors import CheckpointError, ToastError
from toast_core.backbones import DEFAULT_BACKBONE
from toast_core.io.peft import (UnsupportedAdapterError, backbone_name, convert_peft_adapter, import_peft_lora,
                              is_peft_adapter)

from .conftest import TINY

KW = TINY["backbone_kwargs"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = 5


def base_vit(tmp_path):
    """A tiny timm ViT with non-trivial weights, and the same weights as a local safetensors file."""
    torch.manual_seed(0)
    vit = timm.create_model(TINY["backbone"], pretrained=False, num_classes=CLASSES, img_size=32, **KW)
    for p in vit.parameters():
        p.data.normal_(0, 0.05)
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    return vit.eval(), path


def peft_adapter(tmp_path, name="adapter", **lora):
    """Wrap the base ViT with PEFT, make the adapter non-trivial, save it. Returns (folder, PEFT model, base file)."""
    vit, base_file = base_vit(tmp_path)
    options = dict(target_modules=["qkv"], r=4, lora_alpha=8, modules_to_save=["head"])
    peft_model = get_peft_model(vit, LoraConfig(**{**options, **lora}))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if p.requires_grad:  # lora_B starts at zero; the saved head copy starts equal to the base head
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    folder = tmp_path / name
    peft_model.save_pretrained(folder)
    return folder, peft_model.eval(), base_file


def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_lora_gives_peft_logits(tmp_path, rslora):
    folder, peft_model, base_file = peft_adapter(tmp_path, use_rslora=rslora)
    assert is_peft_adapter(folder) and not is_peft_adapter(tmp_path) and tc.import_peft_lora is import_peft_lora
    model = import_peft_lora(folder, backbone=TINY["backbone"], pretrained=str(base_file), img_size=32,
                             backbone_kwargs=KW)
    assert model.build_info["method"] == "lora" and model.config.rank == 4 and model.config.target == "qkv"
    assert model.config.alpha == pytest.approx(8 * 2 if rslora else 8)  # alpha/r == PEFT's scaling
    x = images()
    with torch.no_grad():
        theirs, ours = peft_model(x), model(x)
        plain = peft_model.base_model.model  # sanity: the adapter changes the output
        with peft_model.disable_adapter():
            untouched = plain(x)
    assert (theirs - untouched).abs().max() > 1e-2
    assert (theirs - ours).abs().max() < 1e-4


def test_head_from_the_base_weights_and_converted_checkpoint(tmp_path, monkeypatch):
    """No modules_to_save: the head is the base model's; the converted project checkpoint loads the same."""
    folder, peft_model, base_file = peft_adapter(tmp_path, modules_to_save=None)
    with pytest.raises(CheckpointError, match="no classifier head"):
        import_peft_lora(folder, backbone=TINY["backbone"], pretrained=str(base_file), img_size=32, backbone_kwargs=KW)
    monkeypatch.setenv("TOAST_HOME", str(tmp_path / "home"))
    options = dict(backbone=TINY["backbone"], pretrained=str(base_file), img_size=32, backbone_kwargs=KW,
                   num_classes=CLASSES)
    weights = convert_peft_adapter(folder, **options)
    assert weights.parent.parent == tmp_path / "home" / "imported"
    assert convert_peft_adapter(folder, **options) == weights  # content-addressed: written once
    model = tc.load_checkpoint(weights)
    assert model.checkpoint_info["imported"]["format"] == "peft-lora"
    with torch.no_grad():
        assert (peft_model(images()) - model(images())).abs().max() < 1e-4


@pytest.mark.parametrize("lora, match", [
    (dict(target_modules=["qkv", "fc1"]), r"blocks\.\*\.mlp\.fc1"),
    (dict(target_modules=["qkv"], layers_to_transform=[0, 2], layers_pattern="blocks"), r"missing \[1\]"),
    (dict(rank_pattern={"blocks.0.attn.qkv": 2}), "rank_pattern"),
    (dict(alpha_pattern={"blocks.1.attn.qkv": 2}), "alpha_pattern"),
    (dict(use_dora=True), "DoRA"),
    (dict(bias="lora_only"), "bias"),
    (dict(modules_to_save=["head", "norm"]), r"modules_to_save \['norm'\]"),
])
def test_unrepresentable_adapters_are_refused_by_name(tmp_path, lora, match):
    folder, _, base_file = peft_adapter(tmp_path, **lora)
    with pytest.raises(UnsupportedAdapterError, match=match):
        import_peft_lora(folder, backbone=TINY["backbone"], pretrained=str(base_file), img_size=32, backbone_kwargs=KW)


def test_backbone_from_the_adapters_base_model_name():
    name = lambda base, given=None: backbone_name({"base_model_name_or_path": base}, given)  # noqa: E731
    assert name("hf-hub:timm/vit_base_patch16_224.augreg_in21k") == "vit_base_patch16_224"
    assert name("timm/vit_small_patch14_dinov2.lvd142m") == "vit_small_patch14_dinov2"
    assert name(None) == name("google/vit-base-patch16-224") == name("/my/weights.pth") == DEFAULT_BACKBONE
    assert name("timm/vit_base_patch16_224", given="deit_small_patch16_224") == "deit_small_patch16_224"


def test_broken_or_unsafe_adapter_folders(tmp_path):
    folder, _, base_file = peft_adapter(tmp_path)
    kw = dict(backbone=TINY["backbone"], pretrained=str(base_file), img_size=32, backbone_kwargs=KW)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        import_peft_lora(folder, **kw)
    (folder / "adapter_model.bin").rename(folder / "adapter_model.safetensors")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    with pytest.raises(UnsupportedAdapterError, match="IA3"):
        import_peft_lora(folder, **kw)
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(ToastError, match="cannot read"):
        import_peft_lora(folder, **kw)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    other = dict(kw, pretrained=False, backbone_kwargs={**KW, "depth": 2})  # a shallower backbone
    with pytest.raises(UnsupportedAdapterError, match="only 2"):
        import_peft_lora(folder, **other)


def test_adapter_on_the_default_backbone_loads_in_the_models_page(tmp_path, monkeypatch):
    """PEFT on stock timm DINOv2-S with the project's default weights: the Models page takes the folder
    path (converted once into a checkpoint), and the loaded model gives PEFT's logits."""
    from safetensors.torch import load_file

    from toast_core.backbones import DEFAULT_IMG_SIZE, load_backbone_weights
    from toast_core.default_backbone import ensure_default_backbone, resize_pos_embed

    from .test_app import _app, _no_exception

    torch.manual_seed(0)
    stock = timm.create_model(DEFAULT_BACKBONE, pretrained=False, num_classes=3, img_size=DEFAULT_IMG_SIZE,
                              dynamic_img_size=True)
    load_backbone_weights(stock, ensure_default_backbone(), resize_fn=resize_pos_embed)  # as the project does
    assert torch.equal(stock.blocks[0].attn.qkv.weight, load_file(str(ensure_default_backbone()))["blocks.0.attn.qkv.weight"])
    peft_model = get_peft_model(stock, LoraConfig(target_modules=["qkv"], r=4, lora_alpha=8, modules_to_save=["head"]))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in (p for p in peft_model.parameters() if p.requires_grad):
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    peft_model.save_pretrained(tmp_path / "dinov2_lora")

    monkeypatch.setenv("TOAST_APP_MODELS", "tiny")
    monkeypatch.setenv("TOAST_DEVICE", "cpu")
    monkeypatch.setenv("TOAST_APP_ALLOW_PATHS", "1")
    at = _app("views/models.py")
    before = len(at.dataframe[0].value)
    at.text_input(key="ckpt-path").set_value(str(tmp_path / "dinov2_lora")).run()
    at.button(key="ckpt-path-load").click().run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert len(table) == before + 1 and table.iloc[-1]["method"] == "lora"
    key = at.session_state["extra_models"][-1]  # "ckpt:<the converted checkpoint>"
    assert "/imported/peft-" in key

    model = tc.load_checkpoint(key[len("ckpt:"):])
    assert model.build_info["backbone"] == DEFAULT_BACKBONE and model.vit.head.out_features == 3
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (peft_model.eval()(x) - model(x)).abs().max().item()
    assert diff < 1e-4, diff
