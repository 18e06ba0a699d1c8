"""Safe checkpoint reading: no code from a file ever runs, wrappers are unwrapped, errors are clear."""
from __future__ import annotations

import os
import pickle
import shlex
import subprocess
import sys
import zipfile

import pytest
import torch

from toast_core.errors import CheckpointError
from toast_core.io.safe_io import (
    load_state_dict, read_checkpoint, read_safetensors_metadata, save_state_dict,
)


class _Payload:
    """Pickling calls only this __reduce__ (it returns a tuple); *unpickling* would run the command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def _sd(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"blocks.0.weight": torch.randn(4, 3, generator=g), "blocks.0.bias": torch.randn(4, generator=g),
            "head.weight": torch.randn(2, 4, generator=g)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _plant(tmp_path, kind: str):
    marker = tmp_path / f"PWNED_{kind}"
    path = tmp_path / f"evil_{kind}.pt"
    obj = {"extra": _Payload(marker), "weight": torch.ones(2)}
    if kind == "zip":
        torch.save(obj, path)
    elif kind == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle, not torch's format; protocol 4 fails earlier in torch's loader (FRAME opcode)
        path.write_bytes(pickle.dumps(obj, protocol=int(kind[-1])))
    return path, marker


@pytest.mark.parametrize("kind", ["zip", "legacy", "raw_pickle_2", "raw_pickle_4"])
def test_code_executing_pickle_is_refused_and_never_runs(tmp_path, kind):
    path, marker = _plant(tmp_path, kind)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(path)
    msg = str(err.value)
    assert "Python objects that would need code" in msg and "refused" in msg
    if kind != "raw_pickle_4":
        assert "posix.system" in msg  # names what it asked for
    assert not marker.exists()


def test_the_planted_payload_is_live(tmp_path):
    """Control: an unsafe loader (plain pickle, in a child process) does run the payload, so the test above
    would catch a loader that executed it."""
    marker, path = tmp_path / "PWNED_control", tmp_path / "control.pkl"
    path.write_bytes(pickle.dumps(_Payload(marker)))  # same payload, without a tensor (child skips torch import)
    code = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, timeout=60)
    assert marker.exists()


def test_safetensors_round_trip_with_metadata(tmp_path):
    sd = _sd()
    sd["tied"] = sd["head.weight"]  # shared storage must not break the save
    path = tmp_path / "sub" / "w.safetensors"
    save_state_dict(sd, path, {"arch": "vit_tiny", "method": "toast"})
    assert _same(load_state_dict(path), sd)
    assert read_safetensors_metadata(path) == {"arch": "vit_tiny", "method": "toast"}
    ck = read_checkpoint(path)
    assert ck.format == "safetensors" and ck.metadata["method"] == "toast"
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]  # no temp file left behind


def test_save_replaces_atomically_and_checks_input(tmp_path):
    path = tmp_path / "w.safetensors"
    save_state_dict(_sd(0), path)
    save_state_dict(_sd(1), path)
    assert _same(load_state_dict(path), _sd(1))
    assert read_safetensors_metadata(path) == {}
    with pytest.raises(TypeError):
        save_state_dict({"a": [1, 2]}, tmp_path / "bad.safetensors")
    with pytest.raises(TypeError):
        save_state_dict(_sd(), tmp_path / "bad.safetensors", {"epoch": 3})
    assert not (tmp_path / "bad.safetensors").exists()


def test_training_checkpoint_is_unwrapped(tmp_path):
    sd = _sd()
    path = tmp_path / "train.pth"
    torch.save({"model": sd, "epoch": 7, "arch": "vit", "optimizer": {"state": {}, "param_groups": []}}, path)
    ck = read_checkpoint(path)
    assert _same(ck.tensors, sd) and ck.format == "torch"
    assert ck.metadata == {"epoch": "7", "arch": "vit"} and ck.dropped == ["optimizer"]


def test_state_dict_and_ema_keys(tmp_path):
    path = tmp_path / "timm_style.pth.tar"
    torch.save({"state_dict": _sd(0), "state_dict_ema": _sd(1), "epoch": 1}, path)
    assert _same(load_state_dict(path), _sd(0))
    assert _same(read_checkpoint(path, prefer_ema=True).tensors, _sd(1))
    ema_only = tmp_path / "ema.pt"
    torch.save({"state_dict_ema": {"model": _sd(2)}}, ema_only)  # nested twice
    assert _same(load_state_dict(ema_only), _sd(2))


def test_ddp_and_compile_prefixes_are_stripped(tmp_path):
    path = tmp_path / "ddp.pt"
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in _sd().items()}}, path)
    assert _same(load_state_dict(path), _sd())
    partial = tmp_path / "partial.pt"  # only some keys prefixed: left alone
    torch.save({"module.a": torch.ones(1), "b": torch.ones(1)}, partial)
    assert set(load_state_dict(partial)) == {"module.a", "b"}


def test_plain_weights_only_files_load(tmp_path):
    sd = _sd()
    for legacy in (False, True):
        path = tmp_path / f"plain_{legacy}.bin"  # extension says nothing: content decides
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        assert _same(load_state_dict(path), sd)
    mixed = tmp_path / "mixed.pt"
    torch.save({"w": torch.nn.Parameter(torch.ones(2)), "n": 3, "lst": [1, 2], "sub": {"b": torch.zeros(1)}}, mixed)
    ck = read_checkpoint(mixed)
    assert set(ck.tensors) == {"w", "sub.b"} and type(ck.tensors["w"]) is torch.Tensor
    assert ck.metadata == {"n": "3"} and ck.dropped == ["lst"]


def test_size_limit(tmp_path):
    path = tmp_path / "w.safetensors"
    save_state_dict(_sd(), path)
    size = path.stat().st_size
    with pytest.raises(CheckpointError, match="too large"):
        load_state_dict(path, max_bytes=size - 1)
    assert load_state_dict(path, max_bytes=size)


def test_truncated_files(tmp_path):
    path = tmp_path / "w.safetensors"
    save_state_dict(_sd(), path)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-20])  # header intact, tensor bytes missing
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict(cut)
    cut.write_bytes(data[:40])  # header itself cut
    with pytest.raises(CheckpointError, match="truncated|damaged"):
        load_state_dict(cut)
    pt = tmp_path / "w.pt"
    torch.save(_sd(), pt)
    pt.write_bytes(pt.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict(pt)


def test_not_a_checkpoint_and_bad_paths(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_state_dict(tmp_path)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict(empty)
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_state_dict(text)
    other_zip = tmp_path / "archive.pt"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_state_dict(other_zip)
    with pytest.raises(CheckpointError, match="not a safetensors"):
        read_safetensors_metadata(text)


def test_empty_and_non_dict_checkpoints(tmp_path):
    empty_sd = tmp_path / "empty_sd.pt"
    torch.save({"state_dict": {}, "epoch": 1}, empty_sd)
    with pytest.raises(CheckpointError, match="no tensors"):
        load_state_dict(empty_sd)
    only_meta = tmp_path / "meta.pt"
    torch.save({"epoch": 1, "lr": 0.1}, only_meta)
    with pytest.raises(CheckpointError, match="no tensors"):
        load_state_dict(only_meta)
    a_list = tmp_path / "list.pt"
    torch.save([torch.ones(1)], a_list)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_state_dict(a_list)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script is deprecated, still the way to make one
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_state_dict(path)
