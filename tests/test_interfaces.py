"""The small interfaces the layers ask each other through (issue 21): method capabilities, which demo set a
checkpoint belongs to, declared progress weights, the one device resolver, the one JSON fallback."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from toast_core.errors import InputError


def test_top_down_capability_is_declared_by_exactly_the_two_pass_methods():
    from toast_core.methods import available_methods, get_method

    two_pass = {m for m in available_methods() if get_method(m).has_top_down}
    assert two_pass == {"toast", "toast-lite"}
    for m in available_methods():  # what the capability promises is there, and only there
        cls = get_method(m)
        assert hasattr(cls, "first_pass_tokens") == cls.has_top_down == hasattr(cls, "token_at"), m


def test_demo_set_of_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TOAST_HOME", str(tmp_path / "home"))
    from toast_core.demo import demo_dir, demo_set_of

    quick = demo_dir(True) / "toast" / "model.safetensors"
    full = demo_dir(False) / "lora" / "model.safetensors"
    assert demo_set_of(quick) == "quick" and demo_set_of(f"ckpt:{quick}") == "quick"
    assert demo_set_of(full) == "full" and demo_set_of(str(full)) == "full"
    assert demo_set_of(tmp_path / "demo-quick" / "toast" / "model.safetensors") is None  # a look-alike path
    assert demo_set_of(tmp_path / "mine.safetensors") is None


def test_progress_weights_are_declared_per_stage():
    from toast_core.demo.progress import METHOD_WEIGHT, SHIPPED_WEIGHT, STAGE_WEIGHTS, stage_weights

    w = stage_weights(["linear", "lora", "toast", "finetune"], shipped={"lora"}, pretune=True)
    assert list(w) == ["backbone", "task", "pretune", "linear", "lora", "toast", "finetune"]
    assert w["toast"] == STAGE_WEIGHTS["toast"] and w["lora"] == SHIPPED_WEIGHT and w["finetune"] == METHOD_WEIGHT
    assert "pretune" not in stage_weights(["linear"], shipped=(), pretune=False)


def test_stages_report_a_fraction_that_never_decreases():
    from toast_core.demo.progress import Stages, stage_weights

    seen = []
    st = Stages(stage_weights(["linear"], (), False), lambda f, text: seen.append(f), echo=False)
    st.start("backbone", "b")
    st.say("half", 0.5)
    st.say("less", 0.2)  # within a stage progress only grows
    st.start("task", "t")
    st.step_callback("linear").on_step(1, 2, 0.5, 1e-3)
    st.finish("done")
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[1] < 1


def test_one_device_resolver():
    from toast_core.device import autocast, device_label, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda") and resolve_device(None) == resolve_device("auto")
    with pytest.raises(InputError):
        resolve_device("no-such-device")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            resolve_device("cuda")
    assert "CPU" in device_label("cpu")
    with autocast("cpu"):  # float32 on a CPU: a null context
        assert torch.ones(2).dtype == torch.float32


def test_one_json_fallback():
    import json

    from toast_core.io.jsonable import json_default

    value = {"a": np.float32(0.5), "b": np.arange(3), "c": Path("/x"), "d": (1, 2), "e": torch.tensor(2.0),
             "f": datetime(2026, 1, 2)}
    assert json.loads(json.dumps(value, default=json_default)) == {
        "a": 0.5, "b": [0, 1, 2], "c": "/x", "d": [1, 2], "e": 2.0, "f": "2026-01-02 00:00:00"}
    with pytest.raises(InputError):
        json.dumps({"x": object()}, default=json_default)
