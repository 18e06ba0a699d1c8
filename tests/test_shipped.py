"""The checkpoints shipped in ``assets/checkpoints``: within the size rules, safe to read, trained on
exactly the default backbone this machine converts, and loadable into the models they describe."""
from __future__ import annotations

import pytest
import torch

from toast_core.checkpoints import load_checkpoint, read_checkpoint_info
from toast_core.demo import SHIPPED_METHODS, plan_for
from toast_core.shipped import SHIPPED_DIR, shipped_checkpoint

ROOT = SHIPPED_DIR.parent.parent


def test_repository_size_rules():
    files = [p for p in (ROOT / "assets").rglob("*") if p.is_file()]
    assert all(p.stat().st_size <= 10e6 for p in files), [p for p in files if p.stat().st_size > 10e6]
    assert sum(p.stat().st_size for p in files) <= 25e6


@pytest.mark.parametrize("method", SHIPPED_METHODS)
def test_shipped_checkpoint_fits_the_default_backbone_and_cpu_plan(method):
    from toast_core.default_backbone import default_backbone_sha256, ensure_default_backbone

    src = shipped_checkpoint(method)
    assert src is not None, f"assets/checkpoints/{method} is missing"
    info = read_checkpoint_info(src)
    plan = plan_for("cpu")
    assert info["method"] == method and info["complete"] and info["shipped_dtype"] == "float16"
    assert info["data"]["image_size"] == plan.image_size and info["data"]["dataset"] is None
    assert len(info["data"]["manifest_sha256"]) == 64 and len(info["classes"]) == 12
    assert 0 <= info["test"]["accuracy"] <= 1 and info["test"]["n"] == 300
    ensure_default_backbone()
    assert info["backbone_weights"]["sha256"] == default_backbone_sha256()
    torch.manual_seed(0)
    model = load_checkpoint(src)  # verifies the backbone hash and every tensor's name and shape
    with torch.no_grad():
        logits = model(torch.randn(2, 3, plan.image_size, plan.image_size))
    assert logits.shape == (2, 12) and torch.isfinite(logits).all()
