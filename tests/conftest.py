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


# ------------------------------------------------------------------------------------------------
# Shared fixtures (modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine a second thread
    that waits for a busy core makes every small op slow."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def restore_torch_threads():
    """The app sets torch's thread count for its process (TOAST_APP_THREADS); give it back afterwards."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def app_tiny_models(monkeypatch):
    """The app in tests: random tiny models of every method, on CPU, paths policy by default."""
    monkeypatch.setenv("TOAST_APP_MODELS", "tiny")
    monkeypatch.setenv("TOAST_DEVICE", "cpu")
    monkeypatch.delenv("TOAST_APP_ALLOW_PATHS", raising=False)
