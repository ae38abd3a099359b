"""NSA compression branch on the GPU with PyTorch SDPA (see ops.compressed_attention).

Packed documents (`cu_seqlens`) run in one SDPA call for all documents. Only complete blocks are
ever candidates, and every block before a query's own block in its document is complete, so a
query's candidates are a contiguous run in the list of all complete blocks in document order: the
`first[doc]`-th to the `first[doc] + local_block - 1`-th. The queries are cut into tiles of QUERY_TILE
tokens; a tile gathers the run of compressed keys from the first candidate of its first query to
the last candidate of its last query, padded to the widest such run (W), and a boolean mask keeps
every query to its own document's run. W is at most (longest document + QUERY_TILE) / block_size,
so the cost is close to running the documents one by one and never T x T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import TensorMemo
from ._documents import count_at_or_below

# Queries per tile of the packed path: smaller tiles waste fewer masked keys (a tile's run starts
# at the first block of its first query's document), larger ones make fewer, bigger SDPA batches.
QUERY_TILE = 256


def compressed_attention(q, k, v, block_size: int, scale: float):
    B, T, HQ, D = q.shape
    HK = k.shape[2]
    G = HQ // HK
    s = block_size
    nbf = T // s  # only complete blocks are ever candidates (with none, only the zero key is seen)

    def pooled(x):  # means in float32 (as the reference), then the attention dtype
        means = x[:, : nbf * s].float().view(B, nbf, s, HK, D).mean(2).to(x.dtype)
        return torch.cat([means.new_zeros(B, 1, HK, D), means], 1)  # [B, nbf + 1, HK, D]

    kc, vc = pooled(k), pooled(v)
    cur = torch.arange(T, device=q.device) // s
    col = torch.arange(nbf + 1, device=q.device)
    visible = torch.where(col[None, :] == 0, (cur == 0)[:, None], (col - 1)[None, :] < cur[:, None])
    qt = q.transpose(1, 2)
    kt = kc.transpose(1, 2).repeat_interleave(G, 1)  # [B, HQ, nbf + 1, D]: small, no T x T
    vt = vc.transpose(1, 2).repeat_interleave(G, 1)
    o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=visible, scale=scale)
    return o.transpose(1, 2)


@dataclass
class _Layout:
    key_tokens: torch.Tensor  # long [NC, s]: the tokens of each complete block (NC = T // s; unused
    # rows past the last real block read tokens 0 .. s-1 and are never visible)
    tile_keys: torch.Tensor  # long [tiles, W + 1]: rows of [zero key, blocks..., zero pad] each tile gathers
    visible: torch.Tensor  # bool [tiles, 1, QUERY_TILE, W + 1]


_LAYOUTS = TensorMemo()


def _layout(cu_seqlens: torch.Tensor, T: int, s: int, max_seqlen: int | None = None) -> _Layout:
    """The tiles' key runs and masks, once per cu_seqlens tensor (every layer shares it).

    W, the widest run, comes from `max_seqlen` (a bound on the documents' lengths) when given: at
    most (max_seqlen + QUERY_TILE - 1) // s blocks, a value of shapes only. Without it W is read
    back from the device. Under torch.compile the layout is built inside the graph (a memo keyed on
    the tensor object would recompile per batch) and W never depends on the batch's documents."""
    width = None if max_seqlen is None else min(T // s, (max_seqlen + QUERY_TILE - 1) // s)
    if torch.compiler.is_compiling():
        return _build_layout(cu_seqlens.long(), T, s, T // s if width is None else width)
    key = (T, s, QUERY_TILE, width)
    layout = _LAYOUTS.get(cu_seqlens, key)
    if layout is None:
        layout = _build_layout(cu_seqlens.long(), T, s, width)
        _LAYOUTS.put(cu_seqlens, key, layout)
    return layout


def _build_layout(cu: torch.Tensor, T: int, s: int, width: int | None) -> _Layout:
    dev = cu.device
    lengths = cu[1:] - cu[:-1]
    full = lengths // s  # complete blocks of each document
    ends = torch.cumsum(full, 0)
    first = ends - full  # index of each document's first complete block among all of them
    nc = T // s  # a bound from shapes: the documents' complete blocks never hold more than T tokens
    c = torch.arange(nc, device=dev)
    doc_of_block = count_at_or_below(ends, nc).clamp(max=lengths.numel() - 1)
    block_start = torch.where(c < ends[-1], cu[doc_of_block] + (c - first[doc_of_block]) * s, 0)
    key_tokens = block_start[:, None] + torch.arange(s, device=dev)[None, :]

    t = torch.arange(T, device=dev)
    doc = count_at_or_below(cu[1:], T)
    lo = first[doc]  # the query's first candidate
    hi = lo + (t - cu[doc]) // s  # one past its last candidate (== lo: only the zero key)
    C = QUERY_TILE
    tiles = -(-T // C)
    tile_lo = lo[::C]
    tile_hi = hi[(torch.arange(1, tiles + 1, device=dev) * C).clamp(max=T) - 1]
    # Without a bound: the one device-to-host read of the packed path, once per cu_seqlens tensor.
    W = int((tile_hi - tile_lo).max()) if width is None else width
    j = torch.arange(W, device=dev)
    # Row 0 of the gathered keys is the zero key, rows 1 .. nc the blocks, past nc zero padding.
    tile_keys = torch.cat([torch.zeros(tiles, 1, dtype=torch.long, device=dev), 1 + tile_lo[:, None] + j[None, :]], 1)
    tq = torch.arange(tiles * C, device=dev)
    real = tq < T
    tq = tq.clamp(max=T - 1)
    lo_q, hi_q = lo[tq].view(tiles, C, 1), hi[tq].view(tiles, C, 1)
    key = tile_lo[:, None, None] + j[None, None, :]  # [tiles, 1, W]: candidate index of column 1 + j
    cand = (key >= lo_q) & (key < hi_q) & real.view(tiles, C, 1)
    zero = ((lo_q == hi_q) | ~real.view(tiles, C, 1))  # padding queries see the zero key (no NaN rows)
    visible = torch.cat([zero, cand], 2)[:, None]
    return _Layout(key_tokens, tile_keys, visible)


def compressed_attention_documents(q, k, v, block_size: int, scale: float, cu_seqlens: torch.Tensor,
                                   max_seqlen: int | None = None):
    """The compression branch of every packed document at once: q, k, v [1, T, H, D]."""
    _, T, HQ, D = q.shape
    HK = k.shape[2]
    G = HQ // HK
    s = block_size
    lay = _layout(cu_seqlens, T, s, max_seqlen)
    W1 = lay.tile_keys.shape[1]
    tiles, C = lay.visible.shape[0], lay.visible.shape[2]

    def tile_keys(x):  # [tiles, HQ, W + 1, D]: the compressed keys (or values) each tile attends to
        means = x[0][lay.key_tokens].float().mean(1).to(x.dtype)  # [NC, HK, D]
        zero = means.new_zeros(1, HK, D)
        table = torch.cat([zero, means, means.new_zeros(W1, HK, D)], 0)
        return table[lay.tile_keys].transpose(1, 2).repeat_interleave(G, 1)

    qt = F.pad(q[0], (0, 0, 0, 0, 0, tiles * C - T)).view(tiles, C, HQ, D).transpose(1, 2)
    o = F.scaled_dot_product_attention(qt, tile_keys(k), tile_keys(v), attn_mask=lay.visible, scale=scale)
    return o.transpose(1, 2).reshape(tiles * C, HQ, D)[:T][None]
