"""Several processes under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU): the process group, sums across
processes, and the module DDP wraps."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

@dataclass
class DistContext:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float], device) -> list[float]:
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_flag(self, flag: bool, device) -> bool:
        return self.all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0


def init_distributed(device_spec: str) -> DistContext:
    """Join the process group set up by ``torchrun`` (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_spec != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    return DistContext(world=dist.get_world_size(), rank=dist.get_rank(), local_rank=local, owns_group=owns)


class _TrainStep(nn.Module):
    """Wraps ``training_outputs`` as ``forward`` so DDP sees (and synchronises) the call."""

    def __init__(self, model: nn.Module, stage: str, first_pass=None):
        super().__init__()
        self.model, self.stage, self.first_pass = model, stage, first_pass

    def forward(self, images):
        if self.first_pass is not None:
            return self.model.training_outputs(images, self.stage, first_pass=self.first_pass)
        return self.model.training_outputs(images, self.stage)
