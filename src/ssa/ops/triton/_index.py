"""The inverted index of the dk/dv backward: for every (batch, KV head, key block), the queries that
selected it, cut into work items of at most `seg` queries.

The dq kernel counts the selections (it reads every query's indices anyway). One single-program
kernel turns the counts into offsets, cursors and per-key segment ends, and one kernel does both the
scatter and the work items: its first programs scatter each query into its key's range (atomic
cursor), the rest find each item's key by a vectorised binary search over the segment ends. That is
two launches and no PyTorch scans, which matters at short sequences, where the backward is bound by
launch overhead on the host rather than by GPU work. The order of queries inside one key's list
depends on the atomics, which only changes the summation order of dk and dv.
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


def inverted_index(block_indices: torch.Tensor, seq_len: int, block_size: int, seg: int):
    """The index on its own, with the counts made by their own kernel instead of the dq kernel."""
    B, T, HK, n = block_indices.shape
    nb = -(-seq_len // block_size)
    idx = block_indices.to(torch.int32).contiguous()
    counts = torch.zeros(B * HK * nb, dtype=torch.int32, device=idx.device)
    _count_kernel[(triton.cdiv(idx.numel(), _BLOCK),)](idx, counts, idx.numel(), T, HK, n, nb, BLOCK=_BLOCK)
    return inverted_index_from_counts(idx, counts, seq_len, block_size, seg)
