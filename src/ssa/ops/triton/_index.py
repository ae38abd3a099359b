"""The inverted index of the dk/dv backward, built by three small Triton kernels.

Same result as `_attention.inverted_index` (up to the order of queries inside one key block, which
only changes the summation order of dk/dv) in about a dozen launches instead of ~35 PyTorch ops. At
short sequences the backward is bound by launch overhead on the host, not by GPU work, which is what
this trims. Steps: count the selections of each key with atomics, exclusive offsets by a cumsum,
scatter each query into its key's range (atomic cursor), then cut the ranges into work items of at
most `seg` queries with a vectorised binary search over the per-key segment counts.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _decode_entries(idx_ptr, pid, total, T, HK, N, NB, BLOCK: tl.constexpr):
    """Flattened [B, T, HK, n] entries of this program: their key, query and validity."""
    e = pid * BLOCK + tl.arange(0, BLOCK)
    in_range = e < total
    blk = tl.load(idx_ptr + e, mask=in_range, other=-1)
    h = (e // N) % HK
    t = (e // (N * HK)) % T
    b = e // (N * HK * T)
    valid = in_range & (blk >= 0) & (blk < NB)
    key = (b * HK + h) * NB + blk
    return key, t, valid


@triton.jit
def _count_kernel(idx_ptr, counts_ptr, total, T, HK, N, NB, BLOCK: tl.constexpr):
    key, t, valid = _decode_entries(idx_ptr, tl.program_id(0), total, T, HK, N, NB, BLOCK)
    tl.atomic_add(counts_ptr + key, 1, mask=valid)


@triton.jit
def _scatter_kernel(idx_ptr, cursor_ptr, qlist_ptr, total, T, HK, N, NB, BLOCK: tl.constexpr):
    key, t, valid = _decode_entries(idx_ptr, tl.program_id(0), total, T, HK, N, NB, BLOCK)
    slot = tl.atomic_add(cursor_ptr + key, 1, mask=valid)  # old value: this entry's place
    tl.store(qlist_ptr + slot, t, mask=valid)


@triton.jit
def _write_items(w, seg_end_ptr, counts_ptr, ends_ptr, items_ptr, num_items, num_keys, steps, SEG,
                 BLOCK: tl.constexpr):
    """Work items w: the key whose segment range holds w (binary search), and its query-list span."""
    lo = tl.zeros((BLOCK,), tl.int32)
    hi = tl.zeros((BLOCK,), tl.int32) + num_keys
    for _ in range(steps):
        mid = (lo + hi) // 2
        v = tl.load(seg_end_ptr + mid, mask=mid < num_keys, other=2**31 - 1)
        right = v <= w
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(right, hi, mid)
    key = lo
    real = key < num_keys
    kc = tl.where(real, key, 0)
    count = tl.load(counts_ptr + kc, mask=real, other=0)
    end = tl.load(ends_ptr + kc, mask=real, other=0)
    nseg = (count + SEG - 1) // SEG
    first_item = tl.load(seg_end_ptr + kc, mask=real, other=0) - nseg
    start = end - count + (w - first_item) * SEG
    m = w < num_items
    tl.store(items_ptr + w, key, mask=m)
    tl.store(items_ptr + num_items + w, start, mask=m)
    tl.store(items_ptr + 2 * num_items + w, tl.minimum(start + SEG, end), mask=m)


@triton.jit
def _items_kernel(seg_end_ptr, counts_ptr, ends_ptr, items_ptr, num_items, num_keys, steps, SEG,
                  BLOCK: tl.constexpr):
    w = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    # The key of item w: the first key whose inclusive segment cumsum exceeds w.
    _write_items(w, seg_end_ptr, counts_ptr, ends_ptr, items_ptr, num_items, num_keys, steps, SEG, BLOCK)


def inverted_index(block_indices: torch.Tensor, seq_len: int, block_size: int, seg: int, num_blocks=None):
    """Drop-in for `_attention.inverted_index` (same return tuple, int32 arrays)."""
    B, T, HK, n = block_indices.shape
    dev = block_indices.device
    nb = -(-seq_len // block_size) if num_blocks is None else num_blocks
    num_keys = B * HK * nb
    idx = block_indices.to(torch.int32).contiguous()
    total = idx.numel()
    grid = (triton.cdiv(total, _BLOCK),)
    counts = torch.zeros(num_keys, dtype=torch.int32, device=dev)
    _count_kernel[grid](idx, counts, total, T, HK, n, nb, BLOCK=_BLOCK)
    ends = torch.cumsum(counts, 0, dtype=torch.int32)
    cursor = ends - counts
    qlist = torch.empty(total, dtype=torch.int32, device=dev)  # tail past the valid entries unused
    _scatter_kernel[grid](idx, cursor, qlist, total, T, HK, n, nb, BLOCK=_BLOCK)
    seg_end = torch.cumsum((counts + seg - 1) // seg, 0, dtype=torch.int32)
    num_items = num_keys + -(-total // seg)  # upper bound, as in the PyTorch build
    items = torch.empty(3, num_items, dtype=torch.int32, device=dev)
    steps = max(1, num_keys.bit_length())
    _items_kernel[(triton.cdiv(num_items, _BLOCK),)](
        seg_end, counts, ends, items, num_items, num_keys, steps, seg, BLOCK=_BLOCK)
    return qlist, items[0], items[1], items[2], num_keys


# ------------------------------------------------------------------------------------------------
# "fused" build (`_attention.INDEX_BUILD = "fused"`): the dq kernel counts the selections (it reads
# every query's indices anyway), one single-program kernel turns the counts into offsets, cursors and
# per-key segment ends, and one kernel does both the scatter and the work items (its first programs
# scatter, the rest cut items). Three launches fewer than the "triton" build and no PyTorch scans.
# ------------------------------------------------------------------------------------------------

SCAN_BLOCK = 1024


@triton.jit
def _scan_kernel(counts_ptr, ends_ptr, cursor_ptr, seg_end_ptr, num_keys, SEG, BLOCK: tl.constexpr):
    carry = tl.zeros((), tl.int32)
    carry_seg = tl.zeros((), tl.int32)
    for k0 in range(0, num_keys, BLOCK):
        kk = k0 + tl.arange(0, BLOCK)
        ok = kk < num_keys
        c = tl.load(counts_ptr + kk, mask=ok, other=0)
        ends = tl.cumsum(c, 0) + carry
        nseg = (c + SEG - 1) // SEG
        seg_end = tl.cumsum(nseg, 0) + carry_seg
        tl.store(ends_ptr + kk, ends, mask=ok)
        tl.store(cursor_ptr + kk, ends - c, mask=ok)
        tl.store(seg_end_ptr + kk, seg_end, mask=ok)
        carry += tl.sum(c, 0)
        carry_seg += tl.sum(nseg, 0)


@triton.jit
def _scatter_items_kernel(idx_ptr, cursor_ptr, qlist_ptr, seg_end_ptr, counts_ptr, ends_ptr, items_ptr,
                          total, T, HK, N, NB, num_items, num_keys, steps, SEG, n_scatter,
                          BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if pid < n_scatter:
        key, t, valid = _decode_entries(idx_ptr, pid, total, T, HK, N, NB, BLOCK)
        slot = tl.atomic_add(cursor_ptr + key, 1, mask=valid)
        tl.store(qlist_ptr + slot, t, mask=valid)
    else:
        w = (pid - n_scatter) * BLOCK + tl.arange(0, BLOCK)
        _write_items(w, seg_end_ptr, counts_ptr, ends_ptr, items_ptr, num_items, num_keys, steps, SEG, BLOCK)


def inverted_index_from_counts(block_indices: torch.Tensor, counts: torch.Tensor, seq_len: int, block_size: int,
                               seg: int, num_blocks: int | None = None):
    """The index from per-key selection counts already made (by the dq kernel): two launches.
    num_blocks: key blocks per (batch, KV head), by default ceil(seq_len / block_size)."""
    B, T, HK, n = block_indices.shape
    dev = block_indices.device
    nb = -(-seq_len // block_size) if num_blocks is None else num_blocks
    num_keys = B * HK * nb
    total = block_indices.numel()
    scan = torch.empty(3, num_keys, dtype=torch.int32, device=dev)  # ends, cursor, seg_end
    _scan_kernel[(1,)](counts, scan[0], scan[1], scan[2], num_keys, seg, BLOCK=SCAN_BLOCK)
    num_items = num_keys + -(-total // seg)
    qlist = torch.empty(total, dtype=torch.int32, device=dev)
    items = torch.empty(3, num_items, dtype=torch.int32, device=dev)
    n_scatter = triton.cdiv(total, _BLOCK)
    _scatter_items_kernel[(n_scatter + triton.cdiv(num_items, _BLOCK),)](
        block_indices, scan[1], qlist, scan[2], counts, scan[0], items,
        total, T, HK, n, nb, num_items, num_keys, max(1, num_keys.bit_length()), seg, n_scatter, BLOCK=_BLOCK)
    return qlist, items[0], items[1], items[2], num_keys


def inverted_index_fused(block_indices: torch.Tensor, seq_len: int, block_size: int, seg: int):
    """Standalone form of the fused build (counts by their own kernel), for tests."""
    B, T, HK, n = block_indices.shape
    nb = -(-seq_len // block_size)
    idx = block_indices.to(torch.int32).contiguous()
    counts = torch.zeros(B * HK * nb, dtype=torch.int32, device=idx.device)
    _count_kernel[(triton.cdiv(idx.numel(), _BLOCK),)](idx, counts, idx.numel(), T, HK, n, nb, BLOCK=_BLOCK)
    return inverted_index_from_counts(idx, counts, seq_len, block_size, seg)
