"""torch.library registration of the Triton kernels, so that autograd and torch.compile see them.

Each kernel launch is wrapped in a `custom_op` with a fake (meta) implementation; torch.compile then
traces the ops as opaque nodes instead of breaking the graph on Triton launches. The sparse
attention forward op carries an autograd formula that calls the backward op. The block indices are
integer inputs and get no gradient, as in the reference.
"""

from __future__ import annotations

import torch

from .. import reference
from .._checks import TensorMemo
from . import _attention, _documents, _nsa, _select

# dtypes the kernels handle; float64 goes to the reference (it is a debugging dtype, and the tensor
# cores have no fast path for it).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Key-block size used to tile sliding windows (any size works; 64 keeps the masked waste of a
# 128-token window at a third of the keys read).
WINDOW_BLOCK = 64


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    # The kernels take arbitrary strides for batch, sequence and head but want unit-stride rows.
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.library.custom_op("ssa::select_blocks_triton", mutates_args=())
def _select_op(q: torch.Tensor, k: torch.Tensor, block_size: int, block_count: int, scale: float,
               cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    table = None if cu_seqlens is None else _documents.block_table(cu_seqlens, q.shape[1], block_size)
    return _select.select_blocks(_last_dim_contiguous(q), _last_dim_contiguous(k), block_size, block_count, scale,
                                 table)


@_select_op.register_fake
def _(q, k, block_size, block_count, scale, cu_seqlens=None):
    B, T, _, _ = q.shape
    return q.new_empty((B, T, k.shape[2], block_count), dtype=torch.int32)


@torch.library.custom_op("ssa::sparse_attention_fwd_triton", mutates_args=())
def _fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_indices: torch.Tensor, block_size: int, scale: float,
    window: int = 0, block_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    return _attention.sparse_forward(q, k, v, block_indices, block_size, scale, window, block_starts)


@_fwd_op.register_fake
def _(q, k, v, block_indices, block_size, scale, window=0, block_starts=None):
    B, T, HQ, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, T, HQ), dtype=torch.float32)


@torch.library.custom_op("ssa::sparse_attention_bwd_triton", mutates_args=())
def _bwd_op(
    do: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    o: torch.Tensor, lse: torch.Tensor, block_indices: torch.Tensor, block_size: int, scale: float,
    window: int = 0, block_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # do may arrive expanded (stride 0 everywhere, e.g. from o.sum()).
    do, q, k, v, o = (_last_dim_contiguous(x) for x in (do, q, k, v, o))
    return _attention.sparse_backward(do, q, k, v, o, lse, dlse, block_indices, block_size, scale, window,
                                      block_starts)


@_bwd_op.register_fake
def _(do, dlse, q, k, v, o, lse, block_indices, block_size, scale, window=0, block_starts=None):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, block_indices, block_size, scale, window, block_starts = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, block_indices, block_starts)
    ctx.block_size = block_size
    ctx.scale = scale
    ctx.window = window


def _backward(ctx, do, dlse):
    q, k, v, o, lse, block_indices, block_starts = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    dq, dk, dv = _bwd_op(do, dlse, q, k, v, o, lse, block_indices, ctx.block_size, ctx.scale, ctx.window,
                         block_starts)
    return dq, dk, dv, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def select_blocks(q, k, block_size: int, block_count: int, scale: float, cu_seqlens=None) -> torch.Tensor:
    """Exact top-k selection, int32 [B, T, HK, block_count] (arguments validated by ssa.ops.api)."""
    if q.dtype not in KERNEL_DTYPES:
        return reference.select_blocks(q, k, block_size, block_count, scale, cu_seqlens)
    return _select_op(q, k, block_size, block_count, float(scale), cu_seqlens)


def block_sparse_attention(q, k, v, block_indices, block_size: int, scale: float, return_lse: bool = False,
                           cu_seqlens=None):
    """Block-sparse attention, differentiable in q, k, v; o (and float32 lse [B, T, HQ])."""
    if q.dtype not in KERNEL_DTYPES:
        return reference.block_sparse_attention(q, k, v, block_indices, block_size, scale, return_lse, cu_seqlens)
    block_starts = None
    if cu_seqlens is not None:  # packed documents: block ids into the global block table
        table = _documents.block_table(cu_seqlens, q.shape[1], block_size)
        block_indices, block_starts = table.to_global(block_indices), table.block_starts
    elif block_indices.dtype != torch.int32:
        block_indices = block_indices.to(torch.int32)
    o, lse = _fwd_op(q, k, v, block_indices, block_size, float(scale), 0, block_starts)
    return (o, lse) if return_lse else o


def sliding_window_attention(q, k, v, window: int, scale: float, cu_seqlens=None):
    """Causal attention over the last `window` positions, through the block-sparse kernels.

    Each query lists the key blocks that overlap its window (blocks of WINDOW_BLOCK keys, at most
    ceil((window - 1) / WINDOW_BLOCK) + 1 of them) and the kernels mask keys outside the window, so
    forward and backward cost O(T * window) with no T x T mask. With `cu_seqlens` (packed documents)
    the blocks are those of the query's own document's grid, listed in the global block table, so
    all documents run in one launch: the kernels' window mask compares positions, which is the same
    inside a document, and the block list never reaches into an earlier document.
    """
    if q.dtype not in KERNEL_DTYPES:
        return reference.sliding_window_attention(q, k, v, window, scale, cu_seqlens)
    T = q.shape[1]
    if cu_seqlens is None:
        blocks, block_starts = _window_blocks(torch.arange(T, device=q.device), window), None
    else:
        blocks, block_starts = _document_window_blocks(cu_seqlens, T, window)
    idx = blocks[None, :, None, :].expand(q.shape[0], T, k.shape[2], blocks.shape[1])
    o, _ = _fwd_op(q, k, v, idx, WINDOW_BLOCK, float(scale), int(window), block_starts)
    return o


def _window_blocks(local: torch.Tensor, window: int) -> torch.Tensor:
    """int32 [T, n]: the blocks (of WINDOW_BLOCK) overlapping the window of each query at `local`
    positions (counted from its sequence's or document's first token); -1 in unused slots."""
    s = WINDOW_BLOCK
    first = (local - window + 1).clamp(min=0) // s  # block of the oldest key in the window
    n = (window - 1 + s - 1) // s + 1
    blocks = first[:, None] + torch.arange(n, device=local.device)[None, :]
    return torch.where(blocks <= (local // s)[:, None], blocks, -1).to(torch.int32)


_WINDOW_BLOCKS = TensorMemo()


def _document_window_blocks(cu_seqlens, T: int, window: int):
    """Window blocks of packed documents in the global block table ids, and the table's block
    starts; built once per cu_seqlens tensor (every layer shares it), with no host sync. Under
    torch.compile they are built inside the graph (the memo keys on the tensor object: traced, it
    would recompile per batch)."""
    if torch.compiler.is_compiling():
        return _build_document_window_blocks(cu_seqlens, T, window)
    key = (T, window, WINDOW_BLOCK)
    hit = _WINDOW_BLOCKS.get(cu_seqlens, key)
    if hit is None:
        hit = _build_document_window_blocks(cu_seqlens, T, window)
        _WINDOW_BLOCKS.put(cu_seqlens, key, hit)
    return hit


def _build_document_window_blocks(cu_seqlens, T: int, window: int):
    table = _documents.block_table(cu_seqlens, T, WINDOW_BLOCK)
    t = torch.arange(T, device=cu_seqlens.device)
    doc_first = table.token_first.long()  # global id of the first block of each token's document
    local = t - table.block_starts.long()[doc_first]
    blocks = _window_blocks(local, window)
    return torch.where(blocks >= 0, blocks + table.token_first[:, None], -1), table.block_starts


def compressed_attention(q, k, v, block_size: int, scale: float, cu_seqlens=None, max_seqlen=None):
    """NSA compression branch on the GPU: PyTorch SDPA over the mean-pooled blocks.

    A zero key/value pair is prepended and is the only visible key for queries of the first block
    (they have no complete earlier block): they output exactly zero and pass no gradient, as in the
    reference. The boolean mask is [T, T/s + 1]: small next to the T x T of full attention. With
    `cu_seqlens` (packed documents) every document's blocks start at its first token and all
    documents run in one SDPA call (`_nsa.compressed_attention_documents`), whose key tiles are
    sized from `max_seqlen` (a bound on the documents' lengths) when given.
    """
    if q.dtype not in KERNEL_DTYPES:
        return reference.compressed_attention(q, k, v, block_size, scale, cu_seqlens)
    if cu_seqlens is not None:
        return _nsa.compressed_attention_documents(q, k, v, block_size, scale, cu_seqlens, max_seqlen)
    return _nsa.compressed_attention(q, k, v, block_size, scale)
