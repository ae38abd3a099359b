"""torch.library registration of the Triton kernels, so that autograd and torch.compile see them.

Each kernel launch is wrapped in a `custom_op` with a fake (meta) implementation; torch.compile then
traces the ops as opaque nodes instead of breaking the graph on Triton launches. The sparse
attention forward op carries an autograd formula that calls the backward op. The block indices are
integer inputs and get no gradient, as in the reference.
"""

from __future__ import annotations

import torch

from .. import reference
from . import _attention, _select

# dtypes the kernels handle; float64 goes to the reference (it is a debugging dtype, and the tensor
# cores have no fast path for it).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    # The kernels take arbitrary strides for batch, sequence and head but want unit-stride rows.
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.library.custom_op("ssa::select_blocks_triton", mutates_args=())
def _select_op(q: torch.Tensor, k: torch.Tensor, block_size: int, block_count: int, scale: float) -> torch.Tensor:
    return _select.select_blocks(_last_dim_contiguous(q), _last_dim_contiguous(k), block_size, block_count, scale)


@_select_op.register_fake
def _(q, k, block_size, block_count, scale):
    B, T, _, _ = q.shape
    return q.new_empty((B, T, k.shape[2], block_count), dtype=torch.int32)


@torch.library.custom_op("ssa::sparse_attention_fwd_triton", mutates_args=())
def _fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_indices: torch.Tensor, block_size: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    return _attention.sparse_forward(q, k, v, block_indices, block_size, scale)


@_fwd_op.register_fake
def _(q, k, v, block_indices, block_size, scale):
    B, T, HQ, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, T, HQ), dtype=torch.float32)


@torch.library.custom_op("ssa::sparse_attention_bwd_triton", mutates_args=())
def _bwd_op(
    do: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    o: torch.Tensor, lse: torch.Tensor, block_indices: torch.Tensor, block_size: int, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # do may arrive expanded (stride 0 everywhere, e.g. from o.sum()).
    do, q, k, v, o = (_last_dim_contiguous(x) for x in (do, q, k, v, o))
    return _attention.sparse_backward(do, q, k, v, o, lse, dlse, block_indices, block_size, scale)


@_bwd_op.register_fake
def _(do, dlse, q, k, v, o, lse, block_indices, block_size, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, block_indices, block_size, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, block_indices)
    ctx.block_size = block_size
    ctx.scale = scale


def _backward(ctx, do, dlse):
    q, k, v, o, lse, block_indices = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    dq, dk, dv = _bwd_op(do, dlse, q, k, v, o, lse, block_indices, ctx.block_size, ctx.scale)
    return dq, dk, dv, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def select_blocks(q, k, block_size: int, block_count: int, scale: float) -> torch.Tensor:
    """Exact top-k selection, int32 [B, T, HK, block_count] (arguments validated by ssa.ops.api)."""
    if q.dtype not in KERNEL_DTYPES:
        return reference.select_blocks(q, k, block_size, block_count, scale)
    return _select_op(q, k, block_size, block_count, float(scale))


def block_sparse_attention(q, k, v, block_indices, block_size: int, scale: float, return_lse: bool = False):
    """Block-sparse attention, differentiable in q, k, v; o (and float32 lse [B, T, HQ])."""
    if q.dtype not in KERNEL_DTYPES:
        return reference.block_sparse_attention(q, k, v, block_indices, block_size, scale, return_lse)
    if block_indices.dtype != torch.int32:
        block_indices = block_indices.to(torch.int32)
    o, lse = _fwd_op(q, k, v, block_indices, block_size, float(scale))
    return (o, lse) if return_lse else o
