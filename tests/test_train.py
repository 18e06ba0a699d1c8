"""The trainer: schedules, loss going down for every method, callbacks, resume (also after SIGKILL
during a checkpoint write), NaN handling, feature caching."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from toast_core.io.checkpoints import load_checkpoint, read_checkpoint_info, read_training_state
from toast_core.training.trainer import (
    NonFiniteLossError,
    TrainConfig,
    TrainingError,
    epoch_indices,
    lr_at,
    train,
)

from . import pause_writes
from .conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_data(n=40, classes=5, seed=0):
    """Images whose class sets the mean colour of the left half: learnable by every method."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    x[:, :, :, :16] += (y.float() / classes * 2 - 1).view(-1, 1, 1, 1) * torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1)
    return torch.utils.data.TensorDataset(x, y)


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    lrs = [lr_at(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_epoch_order_depends_on_seed_and_epoch_and_shards_evenly():
    a, b = epoch_indices(10, 0, seed=1), epoch_indices(10, 1, seed=1)
    assert sorted(a) == list(range(10)) and a != b and a == epoch_indices(10, 0, seed=1)
    r0, r1 = epoch_indices(11, 3, 1, world=2, rank=0), epoch_indices(11, 3, 1, world=2, rank=1)
    assert len(r0) == len(r1) == 6 and set(r0) | set(r1) == set(range(11))


@pytest.mark.parametrize("method", METHODS)
def test_training_reduces_the_loss_and_touches_only_trainable_parameters(method):
    model = tiny_model(method)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = trainable(model)
    data = toy_data()
    lr = 3e-3 if method == "finetune" else 3e-2
    result = train(model, data, data, TrainConfig(epochs=6, batch_size=10, lr=lr, warmup_epochs=0.5))
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.75 * losses[0], losses
    assert result.val["accuracy"] > 0.4  # chance is 0.2
    assert any(not torch.equal(before[n], p) for n, p in trainable(model).items())
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)


def test_callbacks_receive_every_step_and_epoch():
    events, calls = [], []

    class Recorder:
        def on_step(self, step, total, loss, lr):
            events.append(("step", step, total, loss, lr))

        def on_epoch(self, epoch, metrics):
            events.append(("epoch", epoch, metrics))

    def fn(name, *args):
        calls.append(name)

    data = toy_data(24)
    train(tiny_model("lora"), data, data, TrainConfig(epochs=2, batch_size=8, lr=1e-2), callbacks=[Recorder(), fn])
    steps = [e for e in events if e[0] == "step"]
    assert [s[1] for s in steps] == list(range(1, 7)) and all(s[2] == 6 for s in steps)
    assert all(math.isfinite(s[3]) and s[4] > 0 for s in steps)
    epochs = [e for e in events if e[0] == "epoch"]
    assert [e[1] for e in epochs] == [1, 2] and {"train_loss", "val_acc", "val_loss"} <= set(epochs[0][2])
    assert calls.count("on_step") == 6 and calls.count("on_epoch") == 2


def test_head_only_models_train_on_cached_features_with_the_same_result():
    data = toy_data()
    cfg = dict(epochs=3, batch_size=10, lr=1e-2)
    cached = train(tiny_model("linear"), data, data, TrainConfig(**cfg, cache_features=True))
    direct = train(tiny_model("linear"), data, data, TrainConfig(**cfg, cache_features=False))
    for (n, a), (_, b) in zip(trainable(cached.model).items(), trainable(direct.model).items()):
        assert torch.allclose(a, b, atol=1e-5), n
    assert cached.val["accuracy"] == direct.val["accuracy"]


def test_toast_trains_on_a_cached_bottom_up_pass_with_the_same_result():
    """The memoised bottom-up pass (keyed by image content, so flips are their own entries) gives the
    same weights as recomputing it, and from the second epoch every step hits the cache."""
    from toast_core.demo import TensorImageDataset
    from toast_core.training.first_pass import FirstPassCache

    base = toy_data()
    x = (base.tensors[0].clamp(-2, 2) * 60 + 128).round().to(torch.uint8)  # as the demo holds images
    data = TensorImageDataset(x, base.tensors[1], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), hflip=True)
    cfg = dict(epochs=3, batch_size=10, lr=1e-2, seed=3)
    results, hits = [], []
    for cache in (True, False):
        torch.manual_seed(0)  # the same flips in both runs
        model = tiny_model("toast")
        calls = []
        original = FirstPassCache.__call__

        def spy(self, images, _calls=calls):
            _calls.append(self)
            return original(self, images)

        FirstPassCache.__call__ = spy
        try:
            results.append(train(model, data, data, TrainConfig(**cfg, cache_first_pass=cache)))
        finally:
            FirstPassCache.__call__ = original
        hits.append(calls[-1].hit_rate if calls else None)
    (a, b) = results
    for (n, p), (_, q) in zip(trainable(a.model).items(), trainable(b.model).items()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=n)
    assert hits[1] is None and hits[0] > 0.3  # epochs 2-3 see the 80 (image, flip) keys again


def test_first_pass_cache_computes_each_image_once_and_respects_its_memory_cap():
    from toast_core.training.first_pass import FirstPassCache

    seen = []
    cache = FirstPassCache(lambda x: (seen.append(len(x)), x.mean(dim=(2, 3)))[1], max_bytes=3 * 3 * 4)
    imgs = torch.randn(5, 3, 4, 4)
    out = cache(imgs)
    torch.testing.assert_close(out, imgs.mean(dim=(2, 3)))
    again = cache(torch.cat([imgs[:2], imgs.flip(-1)[:1]]))  # two stored, one new (a flip)
    torch.testing.assert_close(again, torch.cat([imgs[:2], imgs.flip(-1)[:1]]).mean(dim=(2, 3)))
    assert seen == [5, 1] and len(cache.store) == 3 and cache.hits == 2 and cache.misses == 6


def test_stop_then_resume_equals_an_uninterrupted_run(tmp_path):
    data = toy_data()
    cfg = TrainConfig(epochs=3, batch_size=10, lr=1e-2, seed=3)
    reference = train(tiny_model("toast-lite"), data, data, cfg)

    class StopAt:
        def on_step(self, step, total, loss, lr):
            return step != 6  # stop in the middle of epoch 2 (4 steps per epoch)

    first = train(tiny_model("toast-lite"), data, data, cfg, tmp_path, callbacks=[StopAt()])
    assert first.stopped and first.steps == 6
    progress = read_training_state(tmp_path / "last.safetensors")[1]["progress"]
    assert (progress["epoch"], progress["step_in_epoch"]) == (1, 2)
    resumed = train(tiny_model("toast-lite"), data, data, cfg, tmp_path, resume=True)
    assert resumed.steps == 12 and len(resumed.history) == 3
    for n, p in trainable(reference.model).items():
        assert torch.equal(p, trainable(resumed.model)[n]), n
    info = read_checkpoint_info(tmp_path)
    assert info["complete"] and info["epochs_done"] == 3


def test_resume_refuses_another_runs_state_unless_auto(tmp_path):
    data = toy_data(20)
    train(tiny_model("lora"), data, None, TrainConfig(epochs=1, batch_size=10, lr=1e-2), tmp_path)
    with pytest.raises(TrainingError, match="belongs to another run"):
        train(tiny_model("lora"), data, None, TrainConfig(epochs=1, batch_size=10, lr=2e-2), tmp_path, resume=True)
    messages = []
    result = train(tiny_model("lora"), data, None, TrainConfig(epochs=1, batch_size=10, lr=2e-2), tmp_path,
                   resume="auto", callbacks=[lambda name, *a: messages.append(a[0]) if name == "on_message" else None])
    assert result.steps == 2 and any("discarding" in m for m in messages)


class PoisonedData(torch.utils.data.Dataset):
    """Toy data that turns to NaN when ``poison`` is set (as a corrupt batch would)."""

    def __init__(self):
        self.base, self.poison = toy_data(20), False

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return (x * float("nan") if self.poison else x), y


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    data = PoisonedData()

    class PoisonAfterFirstEpoch:
        def on_epoch(self, epoch, metrics):
            data.poison = True

    model = tiny_model("toast")
    with pytest.raises(NonFiniteLossError, match=r"loss became NaN or infinite at epoch 2, step 3 .*last good checkpoint"):
        train(model, data, None, TrainConfig(epochs=3, batch_size=10, lr=1e-2), tmp_path,
              callbacks=[PoisonAfterFirstEpoch()])
    info = read_checkpoint_info(tmp_path)
    assert info["epochs_done"] == 1 and not info["complete"]
    loaded = load_checkpoint(tmp_path)
    assert all(torch.isfinite(p).all() for p in loaded.parameters())
    assert read_training_state(tmp_path / "last.safetensors")[1]["progress"]["epoch"] == 1
    data.poison = False
    resumed = train(tiny_model("toast"), data, None, TrainConfig(epochs=3, batch_size=10, lr=1e-2), tmp_path,
                    resume=True)
    assert resumed.steps == 6 and read_checkpoint_info(tmp_path)["complete"]


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    from tests.conftest import tiny_model
    from tests.test_train import toy_data
    from toast_core.training.trainer import TrainConfig, train
    data = toy_data()
    train(tiny_model("lora"), data, data, TrainConfig(epochs=3, batch_size=10, lr=1e-2, seed=5), sys.argv[1], resume=True)
    print("finished", flush=True)
""")


def _run(out, env_extra=None, kill_at_marker=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out), str(ROOT)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    if kill_at_marker is not None:
        for line in proc.stderr:
            if kill_at_marker in line:
                proc.send_signal(signal.SIGKILL)
                break
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one_and_resumes(tmp_path):
    out = tmp_path / "run"
    # Writes: #1 epoch-1 checkpoint, #2 epoch-1 training state, #3 epoch-2 checkpoint (killed there).
    code, _, _ = _run(out, pause_writes.child_env(120, nth=3), kill_at_marker="write #3 paused")
    assert code == -signal.SIGKILL
    assert list(out.glob(".model.safetensors.tmp-*")), "the kill should have interrupted a write"
    info = read_checkpoint_info(out)
    assert info["epochs_done"] == 1 and not info["complete"]
    load_checkpoint(out)  # the previous checkpoint is intact and loads

    code, stdout, stderr = _run(out)
    assert code == 0 and "finished" in stdout, stderr[-2000:]
    assert not list(out.glob(".*.tmp-*")), "stale temporary files are cleaned up"
    info = read_checkpoint_info(out)
    assert info["complete"] and info["epochs_done"] == 3 and len(info["history"]) == 3
    data = toy_data()
    reference = train(tiny_model("lora"), data, data, TrainConfig(epochs=3, batch_size=10, lr=1e-2, seed=5))
    resumed = load_checkpoint(out)
    for n, p in trainable(reference.model).items():
        assert torch.allclose(p, dict(resumed.named_parameters())[n], atol=1e-6), n


# ------------------------------------------------------------------------------------------------
# Command line and the ImageFolder reader
# ------------------------------------------------------------------------------------------------

TINY_ARGS = ["--backbone", "vit_tiny_patch16_224", "--pretrained", "random", "--image-size", "32", "--backbone-kwargs",
             '{"patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2}', "--quiet", "--batch-size", "4"]


def make_folder(root: Path, with_val: bool = True) -> Path:
    """A tiny ImageFolder dataset: red vs blue squares, a mask for one image, a box for another."""
    import json as _json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    splits = ("train", "val") if with_val else ("train",)
    for split in splits:
        for c, colour in (("blue", (40, 40, 220)), ("red", (220, 40, 40))):
            (root / split / c).mkdir(parents=True)
            for i in range(6 if split == "train" else 2):
                img = rng.integers(0, 60, (40, 48, 3), dtype=np.uint8)
                img[10:30, 12:32] = colour
                Image.fromarray(img).save(root / split / c / f"{i}.png")
    (root / "masks" / "train" / "red").mkdir(parents=True)
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:32] = 255
    Image.fromarray(mask).save(root / "masks" / "train" / "red" / "0.png")
    (root / "boxes.json").write_text(_json.dumps({"train/blue/1.png": [12, 10, 32, 30]}))
    return root


def test_image_folder_reads_classes_masks_boxes_and_holds_out_val(tmp_path):
    from toast_core.data.folder import ImageFolderDataset
    from toast_core.errors import InputError

    root = make_folder(tmp_path / "data", with_val=False)
    tr = ImageFolderDataset(root, "train", 16, val_fraction=0.34)
    va = ImageFolderDataset(root, "val", 16, val_fraction=0.34)
    assert tr.class_names == ["blue", "red"] and len(tr) + len(va) == 12 and len(va) == 4
    assert not {r for r, _ in tr.items} & {r for r, _ in va.items}
    items = {rel: tr[i] for i, (rel, _) in enumerate(tr.items)}
    masked = items.get("train/red/0.png") or next(va[i] for i, (r, _) in enumerate(va.items) if r == "train/red/0.png")
    assert masked["has_mask"] and masked["target_mask"].shape == (16, 16)
    assert masked["target_mask"].float().mean() == pytest.approx(20 * 20 / (40 * 48), abs=0.06)
    assert masked["image"].shape == (3, 16, 16) and masked["label"] == 1
    with pytest.raises(InputError, match="no train/ directory"):
        ImageFolderDataset(tmp_path / "nothing", "train")


def test_train_and_pretune_commands_on_a_folder_dataset(tmp_path):
    from toast_core.io.checkpoints import load_checkpoint
    from toast_core.cli import main

    root = make_folder(tmp_path / "data")
    pre = tmp_path / "pre"
    assert main(["pretune", "--gradient", "--out", str(tmp_path / "grad"), "--images", "21", "--val-images", "21",
                 "--epochs", "1", *TINY_ARGS]) == 0
    assert read_checkpoint_info(tmp_path / "grad")["stage"] == "pretune"
    assert main(["pretune", "--out", str(pre), "--images", "42", "--val-images", "21", *TINY_ARGS]) == 0
    info = read_checkpoint_info(pre)
    assert info["stage"] == "pretune" and info["stage1"]["kind"] == "least-squares"
    assert len(info["stage1"]["diagnostics"]["layers"]) == 3
    out = tmp_path / "lite"
    assert main(["train", "--method", "toast-lite", "--data", str(root), "--out", str(out), "--epochs", "2",
                 "--pretuned", str(pre), "--option", "lite_rank=2", *TINY_ARGS]) == 0
    info = read_checkpoint_info(out)
    assert info["classes"] == ["blue", "red"] and info["config"]["lite_rank"] == 2
    assert info["data"]["n_train"] == 12 and info["pretuned_from"]["path"].endswith("model.safetensors")
    lite, stage1 = load_checkpoint(out), load_checkpoint(pre)
    assert torch.equal(lite.decoders[0].linear.base.weight, stage1.decoders[0].linear.weight)  # frozen base = stage 1
    assert main(["train", "--method", "lora", "--data", str(root), "--out", str(tmp_path / "x"), "--lr", "nan",
                 *TINY_ARGS]) == 1  # a clear error, not a traceback


def test_lr_scales_by_parameter_name_give_their_own_groups():
    from toast_core.training.trainer import TrainConfig, build_optimizer, set_lr

    model = tiny_model("toast")
    cfg = TrainConfig(lr=1e-3, head_lr_scale=10.0, lr_scales=(("prompt", 100.0), ("decoders.0", 3.0)))
    opt = build_optimizer(model, cfg)
    set_lr(opt, cfg.lr)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_id[id(model.prompt)]["lr"] == pytest.approx(0.1)
    assert by_id[id(model.prompt)]["weight_decay"] == 0.0  # 1-D: no decay
    assert by_id[id(model.decoders[0].linear.weight)]["lr"] == pytest.approx(3e-3)
    assert by_id[id(model.decoders[1].linear.weight)]["lr"] == pytest.approx(1e-3)
    assert by_id[id(model.vit.head.weight)]["lr"] == pytest.approx(1e-2)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sorted(map(id, trainable)) == sorted(by_id)  # every trainable parameter once
    # Globs tell A_l from B_l; relative_lr multiplies by each parameter's RMS at the start.
    with torch.no_grad():
        model.decoders[1].linear2.weight.mul_(50.0)
    cfg = TrainConfig(lr=1e-2, lr_scales=(("decoders.*.linear.*", 1e-3), ("decoders.*.linear2.*", 0.1)),
                      relative_lr=("decoders.*.linear2.*",))
    opt = build_optimizer(model, cfg)
    set_lr(opt, cfg.lr)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    for dec in model.decoders:
        rms = float(dec.linear2.weight.detach().pow(2).mean().sqrt())
        assert by_id[id(dec.linear.weight)]["lr"] == pytest.approx(1e-5)
        assert by_id[id(dec.linear2.weight)]["lr"] == pytest.approx(1e-3 * rms, rel=1e-5)
    assert by_id[id(model.decoders[1].linear2.weight)]["lr"] > 10 * by_id[id(model.decoders[0].linear2.weight)]["lr"]
    assert sorted(map(id, trainable)) == sorted(by_id)
    assert "relative_lr" not in TrainConfig().signature()  # older runs keep their signature
