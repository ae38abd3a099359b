"""torchrun / DDP helpers: one process per device, gloo on CPU, nccl on CUDA.

`torchrun --nproc_per_node N -m ssa.cli train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without
them everything runs as a single process and these helpers are no-ops.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank layout from the torchrun environment (single process when unset)."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as err:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {err}") from None


def pick_device(preference: str, info: DistInfo):
    """The torch.device for this process: 'auto' takes cuda:LOCAL_RANK when CUDA is available."""
    import torch

    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={preference!r} but CUDA is not available (use cpu or auto)")
        index = int(preference.split(":")[1]) if ":" in preference else info.local_rank
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init(info: DistInfo, device) -> None:
    """Join the process group (only when WORLD_SIZE > 1)."""
    import torch.distributed as dist

    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.enabled:
        dist.barrier()


def mean_across_ranks(values, info: DistInfo, device):
    """Average a list of floats over ranks (one all-reduce); identity for a single process."""
    import torch
    import torch.distributed as dist

    if not info.enabled:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / info.world_size).tolist()


def broadcast_flag(flag: bool, info: DistInfo, device) -> bool:
    """Rank 0's boolean for everyone (e.g. "setup failed, stop")."""
    import torch
    import torch.distributed as dist

    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def wrap_model(model, info: DistInfo, device, find_unused: bool = False):
    """DistributedDataParallel around `model` when distributed; the model itself otherwise."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused)


def no_sync(model, skip: bool):
    """Skip the gradient all-reduce for all but the last micro-batch of an accumulation."""
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return nullcontext()


def unwrap(model):
    return getattr(model, "module", model)
