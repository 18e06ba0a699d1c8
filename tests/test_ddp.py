"""Multi-process training under torchrun (DDP, gloo backend, 2 CPU processes)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from toast_core.io.checkpoints import load_checkpoint, read_checkpoint_info
from toast_core.training.trainer import TrainConfig, train

from .conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, sys.argv[2])
    from safetensors.torch import save_file
    from tests.conftest import tiny_model
    from tests.test_train import toy_data
    from toast_core.training.trainer import TrainConfig, train
    torch.set_num_threads(1)
    data = toy_data(32)
    result = train(tiny_model("toast"), data, data, TrainConfig(epochs=2, batch_size=4, lr=1e-2, device="cpu", seed=7),
                   sys.argv[1])
    rank = int(os.environ["RANK"])
    params = {n: p.detach().contiguous() for n, p in result.model.named_parameters() if p.requires_grad}
    save_file(params, os.path.join(sys.argv[3], f"rank{rank}.safetensors"))
    with open(os.path.join(sys.argv[3], f"rank{rank}.txt"), "w") as f:  # a file each: two ranks' prints interleave
        f.write(f"rank {rank} of {os.environ['WORLD_SIZE']}: steps {result.steps}, val {result.val['accuracy']:.4f}, "
                f"checkpoint {result.checkpoint}")
""")


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_gloo_processes_match_one_process_with_twice_the_batch(tmp_path):
    out, dump = tmp_path / "ckpt", tmp_path / "dump"
    dump.mkdir()
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out), str(ROOT), str(dump)], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lines = [(dump / f"rank{r}.txt").read_text() for r in range(2) if (dump / f"rank{r}.txt").is_file()]
    assert len(lines) == 2 and all("of 2: steps 8," in line for line in lines), (lines, proc.stdout[-2000:])
    assert "checkpoint None" in next(line for line in lines if line.startswith("rank 1"))  # only rank 0 writes
    r0, r1 = load_file(str(dump / "rank0.safetensors")), load_file(str(dump / "rank1.safetensors"))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # gradients were synchronised

    # 2 processes x batch 4 see the same samples per step as 1 process x batch 8 (epoch_indices deals them out).
    from tests.test_train import toy_data

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = toy_data(32)
        single = train(tiny_model("toast"), data, data, TrainConfig(epochs=2, batch_size=8, lr=1e-2, device="cpu", seed=7))
    finally:
        torch.set_num_threads(before)
    ref = {n: p.detach() for n, p in single.model.named_parameters() if p.requires_grad}
    assert single.steps == 8
    for k, v in ref.items():
        assert torch.allclose(r0[k], v, atol=2e-5), (k, (r0[k] - v).abs().max())
    info = read_checkpoint_info(out)
    assert info["complete"] and info["epochs_done"] == 2
    loaded = load_checkpoint(out)
    assert torch.equal(dict(loaded.named_parameters())["prompt"], r0["prompt"])
