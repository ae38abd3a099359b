"""torchrun helpers: one process per device, gloo on CPU, nccl on CUDA; DDP or FSDP2.

`torchrun --nproc_per_node N -m ssa.cli train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without
them everything runs as a single process and these helpers are no-ops.

Applied to the model in this order (as torchtitan does): activation checkpointing, then
`torch.compile` of each decoder block, then data parallelism (`train.parallel`):
  ddp   DistributedDataParallel: every rank holds the whole model and optimizer state.
  fsdp  FSDP2 (`fully_shard`) per decoder block and at the root: parameters, gradients and AdamW
        state are sharded over the ranks; blocks gather their weights just in time. Mixed precision
        computes in the autocast dtype (bf16 on GPU) and reduces gradients in float32.
Sharded checkpoints: `save_sharded` / `load_sharded` write and read the model and optimizer
state through `torch.distributed.checkpoint` with fully-qualified names, so a checkpoint saved on
N ranks loads on any other number of ranks, or in a single process.
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
    """Average over ranks (one all-reduce). A list of floats gives a list; a tensor gives a float64
    tensor on its device, so the caller chooses when the host waits for the result."""
    import torch
    import torch.distributed as dist

    as_tensor = torch.is_tensor(values)
    t = values.to(torch.float64) if as_tensor else torch.tensor(list(values), dtype=torch.float64, device=device)
    if info.enabled:
        dist.all_reduce(t)
        t = t / info.world_size
    return t if as_tensor else t.tolist()


def broadcast_flag(flag: bool, info: DistInfo, device) -> bool:
    """Rank 0's boolean for everyone (e.g. "setup failed, stop")."""
    import torch
    import torch.distributed as dist

    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


PARALLEL = ("ddp", "fsdp")


def apply_activation_checkpointing(model) -> None:
    """Recompute each decoder block's activations in backward instead of keeping them."""
    model.model.gradient_checkpointing = True


def apply_compile(model, backend: str = "inductor") -> None:
    """`torch.compile` each decoder block in place (parameter names do not change), and the chunked
    loss's per-chunk math. The Triton kernels are custom ops with fake kernels, so the graph holds
    them as single nodes. Blocks, not the whole model: one graph serves every layer, and the chunk
    loop and mode plan stay eager. `backend` is torch.compile's (`train.compile_backend`)."""
    import torch

    from ..ops.api import _triton_module

    known = torch.compiler.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"train.compile_backend must be one of {', '.join(sorted(known))}; got {backend!r}")
    # The ops find their kernels through an import that torch.compile cannot trace: done here, before
    # the first trace, it is a cached read, and the blocks' graphs do not break at every op call.
    _triton_module()
    for layer in model.model.layers:
        layer.compile(dynamic=False, backend=backend)
    model.loss_compile_backend = backend


def wrap_model(model, info: DistInfo, device, find_unused: bool = False, parallel: str = "ddp", param_dtype=None):
    """The data-parallel module (DDP or FSDP2) when distributed; the model itself otherwise.

    FSDP2 shards in place: `model` itself becomes the sharded module (its parameters DTensors), so
    build the optimizer after this call.
    """
    if parallel not in PARALLEL:
        raise ValueError(f"train.parallel must be one of {PARALLEL}, got {parallel!r}")
    if not info.enabled:
        return model
    if parallel == "fsdp":
        return _fully_shard(model, info, device, param_dtype)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused)


def _fully_shard(model, info: DistInfo, device, param_dtype):
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (info.world_size,))
    compute = None if param_dtype in (None, torch.float32) else param_dtype
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)  # embeddings (tied head), final norm, untied head
    return model


def is_fsdp(model) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def no_sync(model, skip: bool):
    """Skip the gradient reduction for all but the last micro-batch of an accumulation."""
    if is_fsdp(model):
        model.set_requires_gradient_sync(not skip)
        return nullcontext()
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return nullcontext()


def local_norm(norm):
    """clip_grad_norm_'s result as a plain tensor (it is a DTensor under FSDP2)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def broadcast_object(obj, info: DistInfo):
    """Rank 0's picklable object on every rank."""
    import torch.distributed as dist

    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def full_model_state(model) -> dict:
    """The whole model's state dict on CPU (rank 0 gets it; a collective under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(model, optimizer, path) -> None:
    """Every rank writes its shard of the model and optimizer state (DCP) under `path`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path))


def load_sharded(model, optimizer, path) -> None:
    """Read a `save_sharded` checkpoint into this run's model and optimizer, resharded to this
    run's world size (any, including one process without a process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def unwrap(model):
    """The bare model under DDP / torch.compile wrappers (FSDP2 shards the model in place)."""
    return getattr(model, "module", model)
