"""Single-query decode attention over a KV cache (one new token per sequence).

Cache layout: `k_cache`, `v_cache` [B, L, HK, D] hold each row's keys in slots 0..lengths[b]-1
(rows may have different lengths; slots past a row's length are ignored). `kbar` (and `vbar` for
NSA) [B, NB, HK, D] float32 hold the means of complete blocks; entries of incomplete blocks are
never read. `lengths` [B] counts the cached tokens of each row *including* the query's own token,
so the query sits at position t = lengths - 1.

The sparse step follows docs/design.md §1.1 for the single query at t: candidates are the complete blocks
c < t // s, scored by the per-head softmax of q . kbar * scale summed over the GQA group, the exact
top n-1 win (ties to the lower block), the current block is always selected. It reads the block
means and the selected blocks only, never the whole cache.

The functions here are the reference (PyTorch, float32 math); `sparse_decode` dispatches to the
Triton kernel of `decode_triton` for CUDA tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_backend, check_positive_int, check_scale
from .reference import top_blocks


# ----------------------------------------------------------------------------------------------
# argument checks


def _check_decode_args(q, k_cache, v_cache, lengths, means=()):
    """Validate shapes; returns (B, HQ, HK, D)."""
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)) + tuple(means):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if q.dim() != 3:
        raise ValueError(f"q must have shape [batch, q_heads, dim] (one query per row), got {tuple(q.shape)}")
    B, HQ, D = q.shape
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
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must be an integer tensor of shape [batch={B}]")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    return B, HQ, HK, D


def _check_capacity(name, x, needed):
    if x.shape[1] < needed:
        raise ValueError(f"{name} holds {x.shape[1]} entries but lengths need {needed}")


def _max_length(lengths, max_length):
    """The longest row; pass `max_length` (a host int) to avoid a device-to-host sync."""
    if max_length is None:
        max_length = int(lengths.max())
    # On the GPU this check would cost a sync per step; the model's cache guarantees it there.
    if not lengths.is_cuda and int(lengths.min()) < 1:
        raise ValueError("lengths must be >= 1 (the query's own token is cached before it attends)")
    return max_length


# ----------------------------------------------------------------------------------------------
# reference implementations


def select_blocks_decode_reference(q, kbar, lengths, block_size: int, block_count: int, scale: float):
    """§1.1 selection for one query per row and KV head: int32 [B, HK, block_count], sorted, -1 last."""
    B, HQ, D = q.shape
    NB, HK = kbar.shape[1], kbar.shape[2]
    G = HQ // HK
    current = (lengths.long() - 1) // block_size  # [B]
    logits = torch.einsum("bhgd,bnhd->bhgn", q.float().view(B, HK, G, D), kbar.float()) * scale
    blocks = torch.arange(NB, device=q.device)
    candidate = blocks[None, :] < current[:, None]  # [B, NB]
    logits = logits.masked_fill(~candidate[:, None, None, :], float("-inf"))
    score = torch.softmax(logits, dim=-1).nan_to_num(0.0).sum(2)  # [B, HK, NB]; no candidates -> 0
    score = torch.where(candidate[:, None, :], score, torch.full_like(score, -1.0))
    is_current = (blocks[None, :] == current[:, None])[:, None, :]
    return top_blocks(score, is_current, block_count)


def _attend_positions(q, k_cache, v_cache, pos, visible, scale):
    """q [B,HQ,D] over gathered keys at pos [B,HK,M] (visible [B,HK,M]) -> [B,HQ,D] in q's dtype."""
    B, HQ, D = q.shape
    L, HK = k_cache.shape[1], k_cache.shape[2]
    G = HQ // HK
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    pos = pos.clamp(0, L - 1)
    batch = torch.arange(B, device=q.device)[:, None, None]
    head = torch.arange(HK, device=q.device)[None, :, None]
    k = k_cache[batch, pos, head].to(dtype)  # [B, HK, M, D]
    v = v_cache[batch, pos, head].to(dtype)
    logits = torch.einsum("bhgd,bhmd->bhgm", q.to(dtype).view(B, HK, G, D), k) * scale
    logits = logits.masked_fill(~visible[:, :, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhgm,bhmd->bhgd", probs, v).reshape(B, HQ, D).to(q.dtype)


def sparse_decode_reference(q, k_cache, v_cache, block_indices, lengths, block_size: int, scale: float):
    """Attention of each row's query over the keys of its selected blocks (causal inside its own block)."""
    idx = block_indices.long()  # [B, HK, n]
    offsets = torch.arange(block_size, device=q.device)
    pos = (idx[..., None] * block_size + offsets).flatten(2)  # [B, HK, n*s]
    t = (lengths.long() - 1)[:, None, None]
    visible = (idx[..., None] >= 0).expand(*idx.shape, block_size).flatten(2) & (pos <= t)
    return _attend_positions(q, k_cache, v_cache, pos, visible, scale)


# ----------------------------------------------------------------------------------------------
# public ops


def select_blocks_decode(q, kbar, lengths, block_size: int = 16, block_count: int = 16, scale=None):
    """Selected blocks of one query per row (docs/design.md §1.1): int32 [B, HK, block_count]."""
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        raise ValueError("q must be a torch.Tensor of shape [batch, q_heads, dim]")
    check_positive_int("block_size", block_size)
    check_positive_int("block_count", block_count)
    scale = check_scale(scale, q.shape[-1])
    return select_blocks_decode_reference(q, kbar, lengths, block_size, block_count, scale)


def sparse_decode(
    q, k_cache, v_cache, kbar, lengths, block_size: int = 16, block_count: int = 16, scale=None,
    backend: str = "auto", max_length: int | None = None, return_indices: bool = False,
):
    """One decode step of block-sparse attention. Returns o [B, HQ, D] (and the selection)."""
    _check_decode_args(q, k_cache, v_cache, lengths, (("kbar", kbar),))
    check_positive_int("block_size", block_size)
    check_positive_int("block_count", block_count)
    check_backend(backend)
    scale = check_scale(scale, q.shape[-1])
    max_length = _max_length(lengths, max_length)
    _check_capacity("k_cache", k_cache, max_length)
    _check_capacity("kbar", kbar, (max_length - 1) // block_size)
    use_triton = backend == "triton" or (backend == "auto" and q.is_cuda and _triton_available())
    if use_triton:
        from .decode_triton import sparse_decode_triton

        o, idx = sparse_decode_triton(q, k_cache, v_cache, kbar, lengths, block_size, block_count, scale, max_length)
        if return_indices:  # the kernel lists the current block first; give the standard sorted format
            idx = sort_block_indices(idx)
    else:
        idx = select_blocks_decode_reference(q, kbar, lengths, block_size, block_count, scale)
        o = sparse_decode_reference(q, k_cache, v_cache, idx, lengths, block_size, scale)
    return (o, idx) if return_indices else o


def full_decode(q, k_cache, v_cache, lengths, scale=None, max_length: int | None = None):
    """One decode step of full causal attention over each row's cached keys (SDPA underneath)."""
    B, HQ, HK, D = _check_decode_args(q, k_cache, v_cache, lengths)
    scale = check_scale(scale, D)
    L = _max_length(lengths, max_length)
    _check_capacity("k_cache", k_cache, L)
    kt = k_cache[:, :L].transpose(1, 2)  # [B, HK, L, D], a view
    vt = v_cache[:, :L].transpose(1, 2)
    mask = None
    if B > 1:  # rows of different lengths: hide each row's slots past its length
        mask = (torch.arange(L, device=q.device)[None, :] < lengths[:, None])[:, None, None, :]
    if HQ == HK or _SDPA_HAS_GQA:
        # One query per head with native GQA: SDPA's decode kernels split the keys over the chip.
        extra = {} if HQ == HK else {"enable_gqa": True}
        o = F.scaled_dot_product_attention(q[:, :, None], kt, vt, attn_mask=mask, scale=scale, **extra)
    else:
        # Older torch: the G heads of a KV group as G queries of one key head (no K/V copies;
        # exact, but the GPU kernels parallelise it poorly: 1 ms per call at 128k on an H100).
        o = F.scaled_dot_product_attention(q.view(B, HK, HQ // HK, D), kt, vt, attn_mask=mask, scale=scale)
    return o.reshape(B, HQ, D)


# SDPA takes grouped K/V heads natively (enable_gqa) from torch 2.5.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def compressed_decode(q, kbar, vbar, lengths, block_size: int = 16, scale=None):
    """NSA compression branch for one query: softmax over the complete blocks before its own."""
    B, HQ, D = q.shape
    NB, HK = kbar.shape[1], kbar.shape[2]
    check_positive_int("block_size", block_size)
    scale = check_scale(scale, D)
    G = HQ // HK
    current = (lengths.long() - 1) // block_size
    logits = torch.einsum("bhgd,bnhd->bhgn", q.float().view(B, HK, G, D), kbar.float()) * scale
    candidate = torch.arange(NB, device=q.device)[None, :] < current[:, None]
    logits = logits.masked_fill(~candidate[:, None, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # first block: nothing to attend -> 0
    return torch.einsum("bhgn,bnhd->bhgd", probs, vbar.float()).reshape(B, HQ, D).to(q.dtype)


def window_decode(q, k_cache, v_cache, lengths, window: int = 128, scale=None):
    """Sliding-window branch for one query: the last `window` keys, the query's own included."""
    _check_decode_args(q, k_cache, v_cache, lengths)
    check_positive_int("window", window)
    scale = check_scale(scale, q.shape[-1])
    HK = k_cache.shape[2]
    t = (lengths.long() - 1)[:, None, None]
    pos = t - window + 1 + torch.arange(window, device=q.device)[None, None, :]
    pos = pos.expand(-1, HK, -1)
    return _attend_positions(q, k_cache, v_cache, pos, pos >= 0, scale)


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
