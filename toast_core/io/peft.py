"""LoRA adapters saved by Hugging Face PEFT for a timm ViT, loaded as this project's ``lora`` method.

``get_peft_model(vit, LoraConfig(target_modules=["qkv"], ...)).save_pretrained(DIR)`` writes::

    DIR/adapter_config.json         the LoraConfig (JSON)
    DIR/adapter_model.safetensors   base_model.model.blocks.{l}.attn.qkv.lora_A.weight  (r, dim)
                                    base_model.model.blocks.{l}.attn.qkv.lora_B.weight  (3·dim, r)
                                    base_model.model.head.{weight,bias}  (when modules_to_save=["head"])

PEFT computes ``qkv(x) + scaling · B A x`` with ``scaling = lora_alpha / r`` (``lora_alpha / sqrt(r)``
with ``use_rslora``); this project's LoRA (``target="qkv"``) computes ``qkv(x) + (alpha / rank) · B A x``,
so the same tensors load with ``rank = r`` and ``alpha = scaling · r``. Only what that represents
exactly is accepted: every other configuration (other target modules, per-layer ranks or alphas,
DoRA, trained biases, other ``modules_to_save``, initialisations that rewrite the base weights...)
raises :class:`UnsupportedAdapterError` naming the setting. The adapter holds no backbone: it loads on
the backbone it was trained on (``backbone=`` and ``pretrained=``, as for :func:`toast_core.build_model`).

Only JSON and safetensors are read (a pickled ``adapter_model.bin`` is refused).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import CheckpointError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLED_NAME = "adapter_model.bin"
MAX_CONFIG_BYTES = 2**20
MAX_ADAPTER_BYTES = 2 * 2**30
PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.lora_([AB])(?:\.default)?\.weight$")
_HEAD_KEY = re.compile(r"^head(?:\.modules_to_save(?:\.default)?)?\.(weight|bias)$")
_PARAM_PARTS = {"lora_A", "lora_B", "lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B",
                "modules_to_save", "original_module", "weight", "bias"}
# Initialisations that also rewrite the base weights: the adapter alone does not describe the model.
_BASE_REWRITING_INITS = ("pissa", "olora", "loftq", "corda")
# Settings that must be off (None, False, empty) for the adapter to be a plain LoRA on qkv.
_MUST_BE_OFF = {
    "use_dora": "DoRA (magnitude vectors)", "lora_bias": "a trained bias on lora_B",
    "rank_pattern": "per-module ranks (rank_pattern)", "alpha_pattern": "per-module alphas (alpha_pattern)",
    "layer_replication": "layer replication", "fan_in_fan_out": "fan_in_fan_out (Conv1D-style weights)",
    "use_qalora": "QA-LoRA", "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "target_parameters": "LoRA on parameters (target_parameters)", "megatron_config": "Megatron layers",
    "trainable_token_indices": "trainable tokens", "use_bdlora": "block-diagonal LoRA",
}


class UnsupportedAdapterError(CheckpointError):
    """A PEFT adapter whose configuration this project's LoRA cannot represent exactly."""


def is_peft_adapter(path: Union[str, os.PathLike]) -> bool:
    """True when ``path`` is a PEFT adapter folder (or its ``adapter_config.json``)."""
    p = Path(path)
    return (p.is_dir() and (p / CONFIG_NAME).is_file()) or (p.name == CONFIG_NAME and p.is_file())


def adapter_files(path: Union[str, os.PathLike]) -> tuple[Path, Path]:
    """(config JSON, safetensors weights) of an adapter folder; refuses a pickled or missing weights file."""
    p = Path(path)
    folder = p.parent if p.name == CONFIG_NAME else p
    config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config.is_file():
        raise CheckpointError(f"no PEFT adapter at {folder}: {CONFIG_NAME} is missing")
    if not weights.is_file():
        if (folder / PICKLED_NAME).is_file():
            raise CheckpointError(f"{folder} holds only {PICKLED_NAME} (a pickle, which is never loaded here): "
                                  "save the adapter with save_pretrained(..., safe_serialization=True)")
        raise CheckpointError(f"no PEFT adapter weights at {folder}: {WEIGHTS_NAME} is missing")
    return config, weights


def read_adapter_config(path: Union[str, os.PathLike]) -> dict:
    """The adapter's ``adapter_config.json`` as a dict (size-checked, JSON only)."""
    config, _ = adapter_files(path)
    if config.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{config} is larger than {MAX_CONFIG_BYTES} bytes: not an adapter config")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {config}: {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{config} is not a JSON object")
    return cfg


def lora_settings(cfg: dict) -> dict:
    """``{"rank", "alpha"}`` of this project's LoRA equal to a PEFT ``LoraConfig`` (as saved), or
    :class:`UnsupportedAdapterError` naming every setting it cannot represent."""
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise UnsupportedAdapterError(f"this is a {cfg.get('peft_type')!r} adapter; only PEFT LoRA adapters load here")
    problems = [f"{text} ({key}={cfg[key]!r})" for key, text in _MUST_BE_OFF.items() if cfg.get(key)]
    if cfg.get("bias", "none") != "none":
        problems.append(f"trained biases (bias={cfg['bias']!r}; the project's LoRA keeps the base biases frozen)")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        problems.append(f"init_lora_weights={init!r} rewrites the base weights, which the adapter does not hold")
    saved = cfg.get("modules_to_save") or []
    extra = sorted(set([saved] if isinstance(saved, str) else saved) - {"head"})
    if extra:
        problems.append(f"modules_to_save {extra} (only the classifier 'head' can be loaded)")
    auto = cfg.get("auto_mapping") or {}
    if auto and (auto.get("base_model_class") != "VisionTransformer"
                 or not str(auto.get("parent_library", "")).startswith("timm")):
        problems.append(f"base model {auto.get('parent_library')}.{auto.get('base_model_class')} "
                        "(only timm's VisionTransformer)")
    rank, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        problems.append(f"r={rank!r} (a positive integer is needed)")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        problems.append(f"lora_alpha={alpha!r} (a number is needed)")
    if problems:
        raise UnsupportedAdapterError("this PEFT adapter cannot be loaded as the project's LoRA: " + "; ".join(problems))
    scaling = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    return {"rank": rank, "alpha": float(scaling * rank)}


def map_adapter_state(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """PEFT tensor names -> this project's LoRA parameter names (``vit.blocks.{l}.attn.qkv.lora_A.0``,
    ``vit.head.weight``...). Returns (mapped tensors, adapted block indices, sorted).

    Raises:
        UnsupportedAdapterError: names of modules other than ``blocks.{l}.attn.qkv`` and ``head``.
    """
    out, blocks, other = {}, set(), []
    for key, value in tensors.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        lora, head = _LORA_KEY.match(name), _HEAD_KEY.match(name)
        if lora:
            blocks.add(int(lora.group(1)))
            out[f"vit.blocks.{lora.group(1)}.attn.qkv.lora_{lora.group(2)}.0"] = value
        elif head:
            out[f"vit.head.{head.group(1)}"] = value
        else:
            other.append(name)
    if other:
        modules = sorted({_module_of(n) for n in other})
        raise UnsupportedAdapterError(
            f"the adapter adapts modules the project's LoRA does not ({', '.join(modules[:6])}"
            f"{', …' if len(modules) > 6 else ''}); it adapts only every block's attn.qkv "
            "(target_modules=['qkv']) and may hold the 'head'")
    if not blocks:
        raise UnsupportedAdapterError("the adapter holds no LoRA weights on attn.qkv (target_modules=['qkv'])")
    return out, sorted(blocks)


def _module_of(name: str) -> str:
    """``blocks.3.mlp.fc1.lora_A.weight`` -> ``blocks.*.mlp.fc1`` (for messages)."""
    parts = name.split(".")
    cut = next((i for i, p in enumerate(parts) if p in _PARAM_PARTS), len(parts))
    return re.sub(r"^blocks\.\d+\.", "blocks.*.", ".".join(parts[:cut]) or name)


def backbone_name(cfg: dict, backbone: Optional[str]) -> str:
    """The timm architecture to load on: ``backbone`` if given, else the adapter's
    ``base_model_name_or_path`` when it names a timm model, else the project's default backbone."""
    if backbone:
        return backbone
    import timm

    from ..backbones import DEFAULT_BACKBONE

    base = re.sub(r"^(hf-hub:)?timm/", "", str(cfg.get("base_model_name_or_path") or ""))
    arch = base.split(".")[0]  # without the pretrained tag (".lvd142m")
    return arch if arch and timm.is_model(arch) else DEFAULT_BACKBONE


def import_peft_lora(path: Union[str, os.PathLike], backbone: Optional[str] = None, pretrained=True,
                     num_classes: Optional[int] = None, img_size=None, backbone_kwargs: Optional[dict] = None):
    """Build this project's ``lora`` model from a PEFT LoRA adapter folder.

    Args:
        path: the folder ``save_pretrained`` wrote (or its ``adapter_config.json``).
        backbone: the timm architecture the adapter was trained on (default: the adapter's
            ``base_model_name_or_path`` if it is a timm name, else the project's default backbone).
        pretrained: the base weights, as for :func:`toast_core.build_model` (``True``: the offline
            default / timm's; a path: a local weights file). They must be the ones the adapter was trained on.
        num_classes: classes of the head; read from the adapter when it saved the head
            (``modules_to_save=["head"]``), required otherwise (the head then comes from the base weights).
        img_size, backbone_kwargs: as for :func:`toast_core.build_model`.

    Returns:
        the model in eval mode; ``model.build_info["imported"]`` records the adapter.

    Raises:
        UnsupportedAdapterError: a configuration the project's LoRA cannot represent (the message names it).
        CheckpointError: missing/unsafe files, or tensors that do not fit the backbone.
    """
    from ..models import build_model
    from .safe_io import describe_state_diff, load_state_dict

    cfg = read_adapter_config(path)
    settings = lora_settings(cfg)
    _, weights = adapter_files(path)
    state, blocks = map_adapter_state(load_state_dict(weights, max_bytes=MAX_ADAPTER_BYTES))
    head = state.get("vit.head.weight")
    if head is not None:
        if num_classes is not None and int(num_classes) != head.shape[0]:
            raise CheckpointError(f"the adapter's head has {head.shape[0]} classes, not {num_classes}")
        num_classes = int(head.shape[0])
    elif num_classes is None:
        raise CheckpointError("the adapter holds no classifier head (modules_to_save=['head']): pass num_classes, "
                              "and base weights that carry a trained head of that size")
    arch = backbone_name(cfg, backbone)
    try:
        model = build_model("lora", backbone=arch, num_classes=num_classes, pretrained=pretrained,
                            img_size=img_size, backbone_kwargs=backbone_kwargs, target="qkv", **settings)
    except (ValueError, TypeError, RuntimeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"cannot build the LoRA model on {arch}: {e}") from e
    depth = len(model.vit.blocks)
    if blocks != list(range(depth)):
        missing = sorted(set(range(depth)) - set(blocks))
        raise UnsupportedAdapterError(
            f"the adapter adapts blocks {blocks} of {arch} ({depth} blocks); the project's LoRA adapts every block "
            f"(missing {missing[:8]}: layers_to_transform / layers_pattern are not supported)" if missing else
            f"the adapter has blocks {blocks} but {arch} has only {depth}: another backbone?")
    own = model.state_dict()
    wrong = [f"{k}: adapter {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError(f"the adapter does not fit {arch}: {describe_state_diff([], [], wrong)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    model.build_info["imported"] = {"format": "peft-lora", "path": str(weights.resolve()),
                                    "sha256": _sha256(weights), "peft_version": cfg.get("peft_version"),
                                    "head": "adapter" if head is not None else "base weights"}
    return model.eval()


def _sha256(path: Path) -> str:
    from ..cache import sha256_file

    return sha256_file(path)


def convert_peft_adapter(path: Union[str, os.PathLike], out_dir: Optional[Union[str, os.PathLike]] = None,
                         **kwargs) -> Path:
    """Import a PEFT LoRA adapter (:func:`import_peft_lora`, same ``kwargs``) and save it as this
    project's checkpoint, so that everything that loads checkpoints (the app, ``analyze``, ``figure``)
    takes it. ``out_dir`` defaults to a content-addressed folder under ``$TOAST_HOME/imported``
    (the same adapter and options give the same folder, written once). Returns the weights file."""
    from ..cache import toast_home
    from .checkpoints import WEIGHTS_NAME as CKPT_WEIGHTS, is_complete_checkpoint, save_checkpoint

    config, weights = adapter_files(path)
    if out_dir is None:
        key = json.dumps({"adapter": _sha256(weights), "config": _sha256(config),
                          "options": {k: str(v) for k, v in sorted(kwargs.items())}}, sort_keys=True)
        out_dir = toast_home() / "imported" / f"peft-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    out_dir = Path(out_dir)
    if is_complete_checkpoint(out_dir):
        return out_dir / CKPT_WEIGHTS
    model = import_peft_lora(path, **kwargs)
    return save_checkpoint(model, out_dir, meta={"imported": model.build_info["imported"], "complete": True})


def as_checkpoint_path(path: Union[str, os.PathLike]) -> Path:
    """``path`` itself, or for a PEFT LoRA adapter folder the project checkpoint converted from it (once,
    on the backbone :func:`backbone_name` infers) — what the app's Models page loads by path."""
    return convert_peft_adapter(path) if is_peft_adapter(path) else Path(path)
