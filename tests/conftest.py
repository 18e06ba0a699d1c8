"""Shared fixtures: tiny backbones (no downloads, milliseconds per forward)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")

TINY = dict(backbone="vit_tiny_patch16_224", img_size=32,
            backbone_kwargs=dict(patch_size=8, depth=3, embed_dim=32, num_heads=2))
TINY_REG = dict(backbone="vit_small_patch14_reg4_dinov2", img_size=28,
                backbone_kwargs=dict(patch_size=7, depth=2, embed_dim=24, num_heads=3))


def tiny_model(method: str, num_classes: int = 5, spec: dict = TINY, **config):
    import toast_core as tc

    torch.manual_seed(0)
    model = tc.build_model(method, num_classes=num_classes, pretrained=False, **spec, **config)
    return model.eval()


@pytest.fixture(scope="session")
def session_home(tmp_path_factory):
    """One cache directory for the whole test session (the default backbone converts once)."""
    return tmp_path_factory.mktemp("toast_home")


@pytest.fixture(autouse=True)
def _test_cache(session_home, monkeypatch):
    """Tests never touch the user's cache; a test that needs isolation sets TOAST_HOME itself."""
    monkeypatch.setenv("TOAST_HOME", str(session_home))
