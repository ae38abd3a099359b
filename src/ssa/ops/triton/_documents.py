"""The block table of packed documents: every document's block grid, numbered globally.

A packed sequence of documents (`cu_seqlens`) gives each document its own grid of blocks starting at
its first token, so block c of a document begins at start + c * s and its last block may be partial.
The kernels number all these blocks in document order, as if every document were padded to a
multiple of s: document i owns the global ids first[i] .. first[i] + ceil(len_i / s) - 1. The table
holds the first position of every global block (and T after the last), which is all the attention
kernels need: a block's tokens run from its start to the next block's start (at most s of them).

The table is sized from shapes only (at most ceil(T / s) + num_docs blocks; the ids past the real
ones start at T and are empty), so building it needs no device-to-host copy. A model passes one
cu_seqlens tensor to every layer: the table is built once per tensor and block size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._checks import TensorMemo


@dataclass
class BlockTable:
    block_starts: torch.Tensor  # int32 [NB + 1]: first position of each global block; T past the last
    block_first: torch.Tensor  # int32 [NB]: global id of the first block of the block's document
    token_first: torch.Tensor  # int32 [T]: global id of the first block of each token's document
    token_blocks: torch.Tensor  # int32 [T]: number of blocks of each token's document

    @property
    def num_blocks(self) -> int:
        return self.block_starts.numel() - 1

    def to_global(self, block_indices: torch.Tensor) -> torch.Tensor:
        """Document-relative block ids [1, T, HK, n] -> global ids; ids outside the document -> -1.

        One launch (a chain of PyTorch ops costs several, which shows at short sequences)."""
        return _to_global_op(block_indices, self.token_first, self.token_blocks)


_BLOCK = 1024


# A custom op, so that torch.compile holds the launch as one opaque node (tracing a raw launch
# fails in Triton's CPU interpreter and ties the graph to the launch's Python code).
@torch.library.custom_op("ssa::documents_to_global", mutates_args=())
def _to_global_op(block_indices: torch.Tensor, token_first: torch.Tensor, token_blocks: torch.Tensor) -> torch.Tensor:
    idx = block_indices.contiguous()
    out = torch.empty(idx.shape, dtype=torch.int32, device=idx.device)
    per_token = idx.shape[2] * idx.shape[3]
    if idx.numel():
        _to_global_kernel[(triton.cdiv(idx.numel(), _BLOCK),)](
            idx, out, token_first, token_blocks, idx.numel(), per_token, BLOCK=_BLOCK)
    return out


@_to_global_op.register_fake
def _(block_indices, token_first, token_blocks):
    return torch.empty(block_indices.shape, dtype=torch.int32, device=block_indices.device)


@triton.jit
def _to_global_kernel(idx_ptr, out_ptr, first_ptr, blocks_ptr, total, per_token, BLOCK: tl.constexpr):
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = e < total
    t = e // per_token
    blk = tl.load(idx_ptr + e, mask=ok, other=-1)
    inside = (blk >= 0) & (blk < tl.load(blocks_ptr + t, mask=ok, other=0))
    tl.store(out_ptr + e, tl.where(inside, blk + tl.load(first_ptr + t, mask=ok, other=0), -1), mask=ok)


_TABLES = TensorMemo()


def block_table(cu_seqlens: torch.Tensor, seq_len: int, block_size: int) -> BlockTable:
    if torch.compiler.is_compiling():  # the memo keys on the tensor object: traced, it would recompile per batch
        return _build(cu_seqlens.long(), seq_len, block_size)
    table = _TABLES.get(cu_seqlens, (seq_len, block_size))
    if table is None:
        table = _build(cu_seqlens.long(), seq_len, block_size)
        _TABLES.put(cu_seqlens, (seq_len, block_size), table)
    return table


def _build(cu: torch.Tensor, T: int, s: int) -> BlockTable:
    dev = cu.device
    num_docs = cu.numel() - 1
    nb = -(-T // s) + num_docs  # sum of ceil(len / s) never exceeds this
    lengths = cu[1:] - cu[:-1]
    blocks = (lengths + s - 1) // s
    ends = torch.cumsum(blocks, 0)  # one past each document's last global block id
    first = ends - blocks
    g = torch.arange(nb, device=dev)
    doc = count_at_or_below(ends, nb)  # num_docs for the unused ids past the last
    real = doc < num_docs
    doc = doc.clamp(max=num_docs - 1)
    starts = torch.nn.functional.pad(torch.where(real, cu[doc] + (g - first[doc]) * s, T), (0, 1), value=T)
    token_doc = count_at_or_below(cu[1:], T)
    return BlockTable(
        block_starts=starts.to(torch.int32),
        block_first=first[doc].to(torch.int32),
        token_first=first[token_doc].to(torch.int32),
        token_blocks=blocks[token_doc].to(torch.int32),
    )


def count_at_or_below(bounds: torch.Tensor, n: int) -> torch.Tensor:
    """For every i in [0, n): how many of the sorted `bounds` (each in [0, n]) are <= i.

    This is `searchsorted(bounds, arange(n), right=True)`, written as a histogram and a running sum:
    inductor's searchsorted lowering on the GPU fails on a sliced boundary tensor in torch 2.11
    (`NotImplementedError: SliceView`), and these bounds are slices of cu_seqlens.
    """
    hist = torch.zeros(n + 1, dtype=torch.long, device=bounds.device)
    hist.index_add_(0, bounds, torch.ones_like(bounds))
    return torch.cumsum(hist, 0)[:n]
