"""Decode attention over a KV cache: T new queries per row (T=1: one generated token; T>1: a chunk
of a prompt appended to an existing cache), rows of different lengths.

Cache layout: `k_cache`, `v_cache` [B, L, HK, D] hold each row's keys in slots 0..lengths[b]-1
(slots past a row's length are ignored; L may be a preallocated capacity). `kbar` (and `vbar` for
NSA) [B, NB, HK, D] float32 hold the means of complete blocks; entries of incomplete blocks are
never read. `lengths` [B] counts the cached tokens of each row *including* the new queries' own
tokens, so query j of T sits at position t = lengths - T + j.

Queries are `q` [B, HQ, D] (one per row) or [B, T, HQ, D]; outputs have q's shape.

The sparse step follows docs/design.md §1.1 for each query at t: candidates are the complete blocks
c < t // s, scored by the per-head softmax of q . kbar * scale summed over the GQA group, the exact
top n-1 win (ties to the lower block), the current block is always selected. It reads the block
means and the selected blocks only, never the whole cache.

No function here reads `lengths` on the host when the tensors are on the GPU, so a decode step can
be captured in a CUDA graph and replayed at any length. `max_length` (a host int, the longest row)
only narrows what is read; without it the whole capacity L is the bound.

The functions here are the reference (PyTorch, float32 math); `sparse_decode` dispatches to the
Triton kernel of `ssa.ops.triton._decode` for CUDA tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_backend, check_positive_int, check_scale
from .reference import _SDPA_HAS_GQA, group_block_scores, masked_softmax, top_blocks


# ----------------------------------------------------------------------------------------------
# argument checks


def _as_chunk(q):
    """q as [B, T, HQ, D] and a function giving results back q's rank."""
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.dim() == 3:
        return q[:, None], lambda x: x[:, 0]
    if q.dim() == 4:
        return q, lambda x: x
    raise ValueError(f"q must have shape [batch, q_heads, dim] or [batch, new_tokens, q_heads, dim], got {tuple(q.shape)}")


def _check_decode_args(q, k_cache, v_cache, lengths, means=()):
    """Validate shapes of q [B, T, HQ, D] and the cache; returns (B, T, HQ, HK, D)."""
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)) + tuple(means):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    B, T, HQ, D = q.shape
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
        if x.dim() != 4 or x.shape[0] != B or x.shape[3] != D:
            raise ValueError(f"{name} must have shape [batch={B}, cache_len, kv_heads, dim={D}], got {tuple(x.shape)}")
        if x.dtype != q.dtype or x.device != q.device:
            raise TypeError(f"{name} must share q's dtype and device ({q.dtype}, {q.device}), got {x.dtype}, {x.device}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} must equal k_cache shape {tuple(k_cache.shape)}")
    HK = k_cache.shape[2]
    if HQ % HK:
        raise ValueError(f"q heads ({HQ}) must be a multiple of kv heads ({HK}) for grouped-query attention")
    for name, x in means:
        if x.dim() != 4 or x.shape[0] != B or x.shape[2] != HK or x.shape[3] != D:
            raise ValueError(f"{name} must have shape [batch={B}, blocks, kv_heads={HK}, dim={D}], got {tuple(x.shape)}")
    _check_lengths(lengths, B, T, k_cache.shape[1])
    return B, T, HQ, HK, D


def _check_lengths(lengths, B, T, capacity):
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must be an integer tensor of shape [batch={B}]")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    # On the GPU these checks would cost a sync per step (and break graph capture); the model's
    # cache guarantees them there.
    if not lengths.is_cuda and lengths.numel():
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < T:
            raise ValueError(f"lengths must be >= {T} (the new queries' own tokens are cached before they attend)")
        if hi > capacity:
            raise ValueError(f"lengths reach {hi} but the cache holds {capacity} slots")


def _check_capacity(name, x, needed):
    if x.shape[1] < needed:
        raise ValueError(f"{name} holds {x.shape[1]} entries but lengths need {needed}")


def _bound(k_cache, max_length):
    """Slots to read: `max_length` when the caller knows it, else the whole capacity (no sync)."""
    if max_length is None:
        return k_cache.shape[1]
    check_positive_int("max_length", max_length)
    _check_capacity("k_cache", k_cache, max_length)
    return max_length


def _query_positions(lengths, T):
    """Position of every query [B, T] (int64)."""
    return (lengths.long() - T)[:, None] + torch.arange(T, device=lengths.device)[None, :]


# ----------------------------------------------------------------------------------------------
# reference implementations (q [B, T, HQ, D])


def _candidate_logits(q, means, lengths, block_size, scale):
    """Per-head logits over the block means [B, T, HK, G, NB] float32, the candidate mask [B, T, NB]
    (each query's complete blocks before its own) and each query's own block [B, T]."""
    B, T, HQ, D = q.shape
    NB, HK = means.shape[1], means.shape[2]
    current = _query_positions(lengths, T) // block_size  # [B, T]
    logits = torch.einsum("bthgd,bnhd->bthgn", q.float().view(B, T, HK, HQ // HK, D), means.float()) * scale
    candidate = torch.arange(NB, device=q.device)[None, None, :] < current[..., None]
    return logits, candidate, current


def select_blocks_decode_reference(q, kbar, lengths, block_size: int, block_count: int, scale: float):
    """§1.1 selection per query and KV head: int32 [B, T, HK, block_count], sorted, -1 last."""
    logits, candidate, current = _candidate_logits(q, kbar, lengths, block_size, scale)
    score = group_block_scores(logits, candidate[:, :, None, :])  # [B, T, HK, NB]
    blocks = torch.arange(kbar.shape[1], device=q.device)
    is_current = (blocks[None, None, :] == current[..., None])[:, :, None, :]
    return top_blocks(score, is_current, block_count)


def _attend_positions(q, k_cache, v_cache, pos, visible, scale):
    """q [B,T,HQ,D] over gathered keys at pos [B,T,HK,M] (visible alike) -> [B,T,HQ,D] in q's dtype."""
    B, T, HQ, D = q.shape
    L, HK = k_cache.shape[1], k_cache.shape[2]
    G = HQ // HK
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    pos = pos.clamp(0, L - 1)
    batch = torch.arange(B, device=q.device)[:, None, None, None]
    head = torch.arange(HK, device=q.device)[None, None, :, None]
    k = k_cache[batch, pos, head].to(dtype)  # [B, T, HK, M, D]
    v = v_cache[batch, pos, head].to(dtype)
    logits = torch.einsum("bthgd,bthmd->bthgm", q.to(dtype).view(B, T, HK, G, D), k) * scale
    probs = masked_softmax(logits, visible[:, :, :, None, :])
    return torch.einsum("bthgm,bthmd->bthgd", probs, v).reshape(B, T, HQ, D).to(q.dtype)


def sparse_decode_reference(q, k_cache, v_cache, block_indices, lengths, block_size: int, scale: float):
    """Attention of each query over the keys of its selected blocks (causal inside its own block)."""
    idx = block_indices.long()  # [B, T, HK, n]
    offsets = torch.arange(block_size, device=q.device)
    pos = (idx[..., None] * block_size + offsets).flatten(3)  # [B, T, HK, n*s]
    t = _query_positions(lengths, q.shape[1])[:, :, None, None]
    visible = (idx[..., None] >= 0).expand(*idx.shape, block_size).flatten(3) & (pos <= t)
    return _attend_positions(q, k_cache, v_cache, pos, visible, scale)


# ----------------------------------------------------------------------------------------------
# public ops


def select_blocks_decode(q, kbar, lengths, block_size: int = 16, block_count: int = 16, scale=None):
    """Selected blocks of each query (docs/design.md §1.1): int32 [B, HK, block_count] ([B, T, HK, n] for 4-D q)."""
    q4, back = _as_chunk(q)
    check_positive_int("block_size", block_size)
    check_positive_int("block_count", block_count)
    scale = check_scale(scale, q4.shape[-1])
    _check_lengths(lengths, q4.shape[0], q4.shape[1], kbar.shape[1] * block_size + block_size - 1)
    return back(select_blocks_decode_reference(q4, kbar, lengths, block_size, block_count, scale))


def sparse_decode(
    q, k_cache, v_cache, kbar, lengths, block_size: int = 16, block_count: int = 16, scale=None,
    backend: str = "auto", max_length: int | None = None, return_indices: bool = False,
):
    """Block-sparse attention of the new queries over the cache. Returns o like q (and the selection)."""
    q4, back = _as_chunk(q)
    _check_decode_args(q4, k_cache, v_cache, lengths, (("kbar", kbar),))
    check_positive_int("block_size", block_size)
    check_positive_int("block_count", block_count)
    check_backend(backend)
    scale = check_scale(scale, q4.shape[-1])
    bound = _bound(k_cache, max_length)
    _check_capacity("kbar", kbar, (bound - 1) // block_size)
    use_triton = backend == "triton" or (backend == "auto" and q.is_cuda and _triton_available())
    if use_triton:
        from .triton._decode import sparse_decode_triton

        o, idx = sparse_decode_triton(q4, k_cache, v_cache, kbar, lengths, block_size, block_count, scale, bound)
        if return_indices:  # the kernel lists the current block first; give the standard sorted format
            idx = sort_block_indices(idx)
    else:
        idx = select_blocks_decode_reference(q4, kbar, lengths, block_size, block_count, scale)
        o = sparse_decode_reference(q4, k_cache, v_cache, idx, lengths, block_size, scale)
    return (back(o), back(idx)) if return_indices else back(o)


def full_decode(q, k_cache, v_cache, lengths, scale=None, max_length: int | None = None):
    """Full causal attention of the new queries over each row's cached keys (SDPA underneath).

    With `max_length` (the longest row, a host int) the keys are sliced to it, and a single row with
    a single query needs no mask; without it the whole capacity is read under a length mask, which
    keeps the shapes fixed for CUDA-graph capture.
    """
    q4, back = _as_chunk(q)
    B, T, HQ, HK, D = _check_decode_args(q4, k_cache, v_cache, lengths)
    scale = check_scale(scale, D)
    L = _bound(k_cache, max_length)
    kt = k_cache[:, :L].transpose(1, 2)  # [B, HK, L, D], a view
    vt = v_cache[:, :L].transpose(1, 2)
    qt = q4.transpose(1, 2)  # [B, HQ, T, D]
    mask = None
    if max_length is None or B > 1 or T > 1:  # hide each query's slots past its own position
        t = _query_positions(lengths, T)  # [B, T]
        mask = (torch.arange(L, device=q.device)[None, None, :] <= t[..., None])[:, None]  # [B, 1, T, L]
    if HQ == HK or _SDPA_HAS_GQA:
        extra = {} if HQ == HK else {"enable_gqa": True}
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, **extra)
    else:  # older torch: repeat the KV heads (a copy; only without native GQA)
        G = HQ // HK
        o = F.scaled_dot_product_attention(qt, kt.repeat_interleave(G, 1), vt.repeat_interleave(G, 1),
                                           attn_mask=mask, scale=scale)
    return back(o.transpose(1, 2))


def compressed_decode(q, kbar, vbar, lengths, block_size: int = 16, scale=None):
    """NSA compression branch: softmax over the complete blocks before each query's own."""
    q4, back = _as_chunk(q)
    check_positive_int("block_size", block_size)
    scale = check_scale(scale, q4.shape[-1])
    B, T, HQ, D = q4.shape
    _check_lengths(lengths, B, T, kbar.shape[1] * block_size + block_size - 1)
    logits, candidate, _ = _candidate_logits(q4, kbar, lengths, block_size, scale)
    probs = masked_softmax(logits, candidate[:, :, None, None, :])  # first block: nothing -> 0
    o = torch.einsum("bthgn,bnhd->bthgd", probs, vbar.float()).reshape(B, T, HQ, D).to(q.dtype)
    return back(o)


def window_decode(q, k_cache, v_cache, lengths, window: int = 128, scale=None):
    """Sliding-window branch: the last `window` keys of each query, its own included."""
    q4, back = _as_chunk(q)
    _check_decode_args(q4, k_cache, v_cache, lengths)
    check_positive_int("window", window)
    scale = check_scale(scale, q4.shape[-1])
    HK = k_cache.shape[2]
    t = _query_positions(lengths, q4.shape[1])[:, :, None, None]
    pos = t - window + 1 + torch.arange(window, device=q.device)
    pos = pos.expand(-1, -1, HK, -1)
    return back(_attend_positions(q4, k_cache, v_cache, pos, pos >= 0, scale))


def sort_block_indices(idx: torch.Tensor) -> torch.Tensor:
    """Valid block ids ascending, empty slots (-1) last."""
    big = torch.iinfo(idx.dtype).max
    key = torch.where(idx < 0, torch.full_like(idx, big), idx).sort(dim=-1).values
    return torch.where(key == big, torch.full_like(key, -1), key)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
