"""Block-sparse attention over selected key blocks: forward (with log-sum-exp) and backward.

Forward and dq: one program per (query, batch, KV head); its rows are the G query heads of the group
(padded to GP >= 16 rows for the tensor cores). It walks the query's n block slots BPI blocks at a
time, gathering the keys of each slot, so one tile holds BPI * BS keys.

dk and dv: an inverted index lists, for every (batch, KV head, key block), the queries that selected
it (a sort of the flattened indices). A program takes one segment of at most SEG queries of one key
block, loads that block's keys and values once and streams the queries' rows (query x head) past
them. Long lists (a block that every query picks) are split into several segments whose partial sums
meet through fp32 atomic adds, so no program walks a list of length T. No program ever looks at a
query that did not select its block.

Masking is that of the reference: a selected block is visible up to the query's own position (this
only cuts into the query's own block), empty (-1) slots and positions >= T are masked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _index
from ._common import LOG2E, interpreting, mma, next_pow2

# Queries per dk/dv work item. The mean list length is T * n / num_blocks = n * s (256 at the
# defaults), so a block needs about two items and a block picked by every query is spread over
# T / SEG programs. Shorter segments mean more parallel programs (short sequences have few blocks)
# for a little more atomic traffic (s * D floats per item).
SEG = 128

# How the inverted index is built: "fused" (default: the dq kernel counts, then one scan and one
# scatter+items kernel, and dk and dv share one zero-filled buffer, so the index costs no pass of
# its own), "triton" (count / scatter / items kernels in `_index.py`) or "torch" (sort +
# searchsorted, ~35 PyTorch ops: simplest, and the slowest at long lengths; benchmarks/RESULTS.md).
INDEX_BUILD = "fused"


@triton.jit
def _gather_slot_keys(idx_base, si_t, it, t0, T,
                      S: tl.constexpr, BS: tl.constexpr, BPI: tl.constexpr, N: tl.constexpr, QB: tl.constexpr,
                      WINDOW: tl.constexpr, bstart_ptr=None, DOCS: tl.constexpr = False):
    """Keys of slots it*BPI .. it*BPI+BPI-1 of queries t0 .. t0+QB-1, laid out query-major.

    Returns each key's position, the query it belongs to (0..QB-1) and whether it is visible.
    DOCS (packed documents): block ids index the block table of `_documents.py`, whose entry is the
    block's first position; ids of other documents never occur (the wrapper maps them to -1), so
    causality (pos <= t) is the only mask needed.
    """
    BN: tl.constexpr = BPI * BS
    j = tl.arange(0, QB * BN)
    jq = j // BN
    slot = it * BPI + (j % BN) // BS
    off = j % BS
    t = t0 + jq
    blk = tl.load(idx_base + t * si_t + slot, mask=(slot < N) & (t < T), other=-1)
    if DOCS:
        pos = tl.load(bstart_ptr + blk, mask=blk >= 0, other=0) + off
    else:
        pos = blk * S + off
    ok = (blk >= 0) & (off < S) & (pos <= t) & (pos < T)
    if WINDOW > 0:  # sliding-window attention: only the last WINDOW positions, the query included
        ok = ok & (pos > t - WINDOW)
    return pos, jq, ok


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, idx_ptr, o_ptr, lse_ptr,
    T, HK,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
    si_b, si_t, si_h, so_b, so_t, so_h, sl_b, sl_t, sl_h,
    scale2,
    S: tl.constexpr, BS: tl.constexpr, BPI: tl.constexpr, N: tl.constexpr, QB: tl.constexpr,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, IEEE: tl.constexpr,
    WINDOW: tl.constexpr, bstart_ptr=None, DOCS: tl.constexpr = False,
):
    # Rows are (query, head) pairs of QB consecutive queries. Each query gathers its own keys, so a
    # row may only see the keys of its own query (the block-diagonal mask `mine`). On the GPU QB is 1;
    # larger QB only serves the CPU interpreter, where it cuts the number of programs.
    t0 = tl.program_id(0) * QB
    bh = tl.program_id(1)
    b = (bh // HK).to(tl.int64)  # batch offsets can pass 2^31 elements
    hk = bh % HK
    r = tl.arange(0, QB * GP)
    rq = r // GP
    g = r % GP
    t_r = t0 + rq
    row_ok = (g < G) & (t_r < T)
    d = tl.arange(0, BD)
    d_ok = d < D
    heads = hk * G + g
    row_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + b * sq_b + t_r[:, None] * sq_t + heads[:, None] * sq_h + d[None, :], mask=row_mask, other=0.0)
    idx_base = idx_ptr + b * si_b + hk * si_h
    k_base = k_ptr + b * sk_b + hk * sk_h
    v_base = v_ptr + b * sv_b + hk * sv_h

    m = tl.full((QB * GP,), float("-inf"), tl.float32)
    l = tl.zeros((QB * GP,), tl.float32)
    acc = tl.zeros((QB * GP, BD), tl.float32)
    for it in range(0, tl.cdiv(N, BPI)):
        pos, jq, ok = _gather_slot_keys(idx_base, si_t, it, t0, T, S, BS, BPI, N, QB, WINDOW, bstart_ptr, DOCS)
        kv_mask = ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + pos[:, None] * sk_t + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + pos[:, None] * sv_t + d[None, :], mask=kv_mask, other=0.0)
        x = mma(q, tl.trans(k), tl.zeros((QB * GP, QB * BPI * BS), tl.float32), IEEE) * scale2
        mine = ok[None, :] & (jq[None, :] == rq[:, None])
        x = tl.where(mine, x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # only before the first visible key
        alpha = tl.exp2(m - m_safe)
        p = tl.exp2(x - m_safe[:, None])
        l = l * alpha + tl.sum(p, 1)
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], IEEE)
        m = m_new
    # Every query sees at least itself (the selection always includes its own block); user-given
    # indices without it give zeros and lse -inf, as in the reference. A NaN sum (non-finite inputs)
    # stays NaN, as in dense attention.
    o = acc / tl.where(l == 0, 1.0, l)[:, None]
    tl.store(o_ptr + b * so_b + t_r[:, None] * so_t + heads[:, None] * so_h + d[None, :],
             o.to(o_ptr.dtype.element_ty), mask=row_mask)
    lse = tl.where(l == 0, float("-inf"), (m + tl.log2(l)) * 0.6931471805599453)
    tl.store(lse_ptr + b * sl_b + t_r * sl_t + heads * sl_h, lse, mask=row_ok)


@triton.jit
def _dq_kernel(
    q_ptr, k_ptr, v_ptr, idx_ptr, o_ptr, do_ptr, lse_ptr, dlse_ptr, delta_ptr, dq_ptr,
    T, HK,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
    si_b, si_t, si_h, so_b, so_t, so_h, sdo_b, sdo_t, sdo_h, sl_b, sl_t, sl_h, sdq_b, sdq_t, sdq_h,
    scale, scale2,
    S: tl.constexpr, BS: tl.constexpr, BPI: tl.constexpr, N: tl.constexpr, QB: tl.constexpr,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, IEEE: tl.constexpr,
    HAS_DLSE: tl.constexpr, WINDOW: tl.constexpr, counts_ptr=None, NB=1, COUNT: tl.constexpr = False,
    NP: tl.constexpr = 16, bstart_ptr=None, DOCS: tl.constexpr = False,
):
    # Same tiling as the forward; recomputes p from the saved lse. Also computes
    # delta = rowsum(dO * O) - dlse here and stores it for the dk/dv kernel, so no [B, T, HQ, D]
    # float32 temporaries are made (a gradient on lse adds p * dlse to dS).
    t0 = tl.program_id(0) * QB
    bh = tl.program_id(1)
    b = (bh // HK).to(tl.int64)  # batch offsets can pass 2^31 elements
    hk = bh % HK
    r = tl.arange(0, QB * GP)
    rq = r // GP
    g = r % GP
    t_r = t0 + rq
    row_ok = (g < G) & (t_r < T)
    d = tl.arange(0, BD)
    d_ok = d < D
    heads = hk * G + g
    row_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + b * sq_b + t_r[:, None] * sq_t + heads[:, None] * sq_h + d[None, :], mask=row_mask, other=0.0)
    do = tl.load(do_ptr + b * sdo_b + t_r[:, None] * sdo_t + heads[:, None] * sdo_h + d[None, :],
                 mask=row_mask, other=0.0)
    o = tl.load(o_ptr + b * so_b + t_r[:, None] * so_t + heads[:, None] * so_h + d[None, :], mask=row_mask, other=0.0)
    # lse, dlse and delta share one contiguous [B, T, HQ] layout (strides sl_*).
    row_off = b * sl_b + t_r * sl_t + heads * sl_h
    lse2 = tl.load(lse_ptr + row_off, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(dlse_ptr + row_off, mask=row_ok, other=0.0)
    tl.store(delta_ptr + row_off, delta, mask=row_ok)
    idx_base = idx_ptr + b * si_b + hk * si_h
    k_base = k_ptr + b * sk_b + hk * sk_h
    v_base = v_ptr + b * sv_b + hk * sv_h
    if COUNT:  # selections per (batch, KV head, key block), for the "fused" inverted index
        ct = t0 + tl.arange(0, QB)
        cs = tl.arange(0, NP)
        cblk = tl.load(idx_base + ct[:, None] * si_t + cs[None, :], mask=(ct < T)[:, None] & (cs < N)[None, :],
                       other=-1)
        cvalid = (cblk >= 0) & (cblk < NB)
        tl.atomic_add(counts_ptr + (b * HK + hk) * NB + cblk, tl.full(cblk.shape, 1, tl.int32), mask=cvalid)

    dq = tl.zeros((QB * GP, BD), tl.float32)
    for it in range(0, tl.cdiv(N, BPI)):
        pos, jq, ok = _gather_slot_keys(idx_base, si_t, it, t0, T, S, BS, BPI, N, QB, WINDOW, bstart_ptr, DOCS)
        kv_mask = ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + pos[:, None] * sk_t + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + pos[:, None] * sv_t + d[None, :], mask=kv_mask, other=0.0)
        x = mma(q, tl.trans(k), tl.zeros((QB * GP, QB * BPI * BS), tl.float32), IEEE) * scale2
        mine = ok[None, :] & (jq[None, :] == rq[:, None]) & row_ok[:, None]
        p = tl.where(mine, tl.exp2(x - lse2[:, None]), 0.0)
        dp = mma(do, tl.trans(v), tl.zeros((QB * GP, QB * BPI * BS), tl.float32), IEEE)
        ds = p * (dp - delta[:, None])
        dq = mma(ds.to(k.dtype), k, dq, IEEE)
    tl.store(dq_ptr + b * sdq_b + t_r[:, None] * sdq_t + heads[:, None] * sdq_h + d[None, :],
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def _dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    qlist_ptr, item_key_ptr, item_start_ptr, item_end_ptr,
    T, HK, NB, NKEYS,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
    sdo_b, sdo_t, sdo_h, sl_b, sl_t, sl_h, sdk_b, sdk_t, sdk_h,
    scale, scale2,
    S: tl.constexpr, BS: tl.constexpr, BQ: tl.constexpr,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, IEEE: tl.constexpr,
    WINDOW: tl.constexpr, bstart_ptr=None, DOCS: tl.constexpr = False,
):
    w = tl.program_id(0)
    key = tl.load(item_key_ptr + w)
    if key >= NKEYS:  # the grid is an upper bound on the number of work items (no host sync)
        return
    start = tl.load(item_start_ptr + w)
    end = tl.load(item_end_ptr + w)
    b = (key // (HK * NB)).to(tl.int64)
    hk = (key // NB) % HK
    c = key % NB

    d = tl.arange(0, BD)
    d_ok = d < D
    j = tl.arange(0, BS)
    if DOCS:  # the block's tokens: from its first position to the next block's (a document's last is partial)
        pos = tl.load(bstart_ptr + c) + j
        kv_ok = (j < S) & (pos < tl.load(bstart_ptr + c + 1))
    else:
        pos = c * S + j
        kv_ok = (j < S) & (pos < T)
    kv_mask = kv_ok[:, None] & d_ok[None, :]
    k = tl.load(k_ptr + b * sk_b + pos[:, None] * sk_t + hk * sk_h + d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + b * sv_b + pos[:, None] * sv_t + hk * sv_h + d[None, :], mask=kv_mask, other=0.0)

    R: tl.constexpr = BQ * GP
    r = tl.arange(0, R)
    r_q = r // GP
    heads = hk * G + r % GP
    g_ok = (r % GP) < G
    dk = tl.zeros((BS, BD), tl.float32)
    dv = tl.zeros((BS, BD), tl.float32)
    for e0 in range(start, end, BQ):
        e = e0 + r_q
        row_ok = (e < end) & g_ok
        t = tl.load(qlist_ptr + e, mask=row_ok, other=0)
        row_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_ptr + b * sq_b + t[:, None] * sq_t + heads[:, None] * sq_h + d[None, :], mask=row_mask, other=0.0)
        do = tl.load(do_ptr + b * sdo_b + t[:, None] * sdo_t + heads[:, None] * sdo_h + d[None, :], mask=row_mask, other=0.0)
        lse2 = tl.load(lse_ptr + b * sl_b + t * sl_t + heads * sl_h, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(delta_ptr + b * sl_b + t * sl_t + heads * sl_h, mask=row_ok, other=0.0)
        x = mma(q, tl.trans(k), tl.zeros((R, BS), tl.float32), IEEE) * scale2
        ok = row_ok[:, None] & kv_ok[None, :] & (pos[None, :] <= t[:, None])
        if WINDOW > 0:
            ok = ok & (pos[None, :] > t[:, None] - WINDOW)
        p = tl.where(ok, tl.exp2(x - lse2[:, None]), 0.0)
        dv = mma(tl.trans(p.to(do.dtype)), do, dv, IEEE)
        dp = mma(do, tl.trans(v), tl.zeros((R, BS), tl.float32), IEEE)
        ds = p * (dp - delta[:, None])
        dk = mma(tl.trans(ds.to(q.dtype)), q, dk, IEEE)
    out = b * sdk_b + pos[:, None] * sdk_t + hk * sdk_h + d[None, :]
    tl.atomic_add(dk_ptr + out, dk * scale, mask=kv_mask)
    tl.atomic_add(dv_ptr + out, dv, mask=kv_mask)


def _tiles(block_size: int, group: int, head_dim: int, k=None, v=None) -> dict:
    BS = max(16, next_pow2(block_size))
    # Queries per forward/dq program: 1 on the GPU; 8 under the CPU interpreter, whose cost is per
    # operation rather than per element. Those 8 queries share the p @ v (and ds @ k) products, where
    # a key hidden from one query meets its zero weight, and 0 * NaN would leak a non-finite key or
    # value into queries that never see it: such inputs take one query per program, as on the GPU.
    shared = interpreting() and all(x is None or bool(torch.isfinite(x).all()) for x in (k, v))
    return dict(
        S=block_size, BS=BS,
        QB=8 if shared else 1,
        BPI=max(1, 64 // BS),  # blocks gathered per step of the forward/dq loops: 64-key tiles
        GP=max(16, next_pow2(group)),
        BD=max(16, next_pow2(head_dim)),
    )


def sparse_forward(q, k, v, block_indices, block_size: int, scale: float, window: int = 0, block_starts=None):
    """o [B, T, HQ, D] (q's dtype) and natural-log lse [B, T, HQ] float32.

    window > 0 additionally hides keys at or before t - window (sliding-window attention).
    block_starts (packed documents): int32 first position of every block of the block table, with
    block_indices already in that table's ids (`_documents.py`).
    """
    B, T, HQ, D = q.shape
    HK = k.shape[2]
    G = HQ // HK
    n = block_indices.shape[-1]
    o = torch.empty_like(q)
    lse = torch.empty(B, T, HQ, dtype=torch.float32, device=q.device)
    tiles = _tiles(block_size, G, D, k, v)
    _fwd_kernel[(triton.cdiv(T, tiles["QB"]), B * HK)](
        q, k, v, block_indices, o, lse,
        T, HK,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *block_indices.stride()[:3], *o.stride()[:3], *lse.stride(),
        scale * LOG2E,
        N=n, G=G, D=D, IEEE=q.dtype == torch.float32, WINDOW=window, **tiles,
        bstart_ptr=block_starts, DOCS=block_starts is not None,
        num_warps=4, num_stages=2,
    )
    return o, lse


def inverted_index(block_indices: torch.Tensor, seq_len: int, block_size: int, seg: int | None = None,
                   num_blocks: int | None = None):
    """For each (batch, KV head, key block), the queries that selected it, cut into work items.

    Returns (qlist, item_key, item_start, item_end, num_keys): qlist holds query positions grouped by
    key = (b * HK + hk) * NB + block; work item w covers qlist[item_start[w]:item_end[w]] of key
    item_key[w]. The item arrays have a fixed upper-bound length with unused items set to key
    num_keys, so building them needs no device-to-host synchronisation. Memory is O(B * T * HK * n).
    """
    seg = SEG if seg is None else seg
    B, T, HK, n = block_indices.shape
    dev = block_indices.device
    nb = -(-seq_len // block_size) if num_blocks is None else num_blocks
    num_keys = B * HK * nb
    idx = block_indices.long()
    bh = (torch.arange(B, device=dev)[:, None, None, None] * HK + torch.arange(HK, device=dev)[None, None, :, None])
    valid = (idx >= 0) & (idx < nb)
    keys = torch.where(valid, bh * nb + idx, num_keys).flatten()
    sorted_keys, order = torch.sort(keys)
    qlist = (order // (HK * n) % T).to(torch.int32)
    starts = torch.searchsorted(sorted_keys, torch.arange(num_keys + 1, device=dev))
    counts = starts[1:] - starts[:-1]
    nseg = (counts + seg - 1) // seg
    seg_end = torch.cumsum(nseg, 0)
    max_items = num_keys + -(-keys.numel() // seg)  # sum(ceil(c / seg)) <= #keys + total / seg
    w = torch.arange(max_items, device=dev)
    item_key = torch.searchsorted(seg_end, w, right=True)
    kc = item_key.clamp(max=num_keys - 1)
    item_start = starts[kc] + (w - (seg_end[kc] - nseg[kc])) * seg
    item_end = torch.minimum(item_start + seg, starts[kc + 1])
    return qlist, item_key.to(torch.int32), item_start.to(torch.int32), item_end.to(torch.int32), num_keys


def sparse_backward(do, q, k, v, o, lse, dlse, block_indices, block_size: int, scale: float, window: int = 0,
                    block_starts=None):
    """dq, dk, dv of block-sparse attention; dlse (or None) is the gradient reaching lse (block_starts:
    packed documents, as in `sparse_forward`)."""
    B, T, HQ, D = q.shape
    HK = k.shape[2]
    G = HQ // HK
    n = block_indices.shape[-1]
    lse = lse.contiguous()
    if dlse is not None:
        dlse = dlse.float().contiguous()
    delta = torch.empty_like(lse)  # written by the dq kernel
    tiles = _tiles(block_size, G, D, k, v)
    ieee = q.dtype == torch.float32

    dq = torch.empty_like(q)
    nb = -(-T // block_size) if block_starts is None else block_starts.numel() - 1
    docs = dict(bstart_ptr=block_starts, DOCS=block_starts is not None)
    fused = INDEX_BUILD == "fused"
    if fused:
        block_indices = block_indices.contiguous()
        counts = torch.zeros(B * HK * nb, dtype=torch.int32, device=q.device)
        extra = dict(counts_ptr=counts, NB=nb, COUNT=True, NP=max(16, next_pow2(n)))
    else:
        extra = {}
    _dq_kernel[(triton.cdiv(T, tiles["QB"]), B * HK)](
        q, k, v, block_indices, o, do, lse, dlse if dlse is not None else lse, delta, dq,
        T, HK,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *block_indices.stride()[:3],
        *o.stride()[:3], *do.stride()[:3], *lse.stride(), *dq.stride()[:3],
        scale, scale * LOG2E,
        N=n, G=G, D=D, IEEE=ieee, HAS_DLSE=dlse is not None, WINDOW=window, **tiles, **extra, **docs,
        num_warps=4, num_stages=2,
    )

    if fused:
        qlist, item_key, item_start, item_end, num_keys = _index.inverted_index_from_counts(
            block_indices, counts, T, block_size, SEG, nb)
    elif INDEX_BUILD == "triton":
        qlist, item_key, item_start, item_end, num_keys = _index.inverted_index(block_indices, T, block_size, SEG, nb)
    else:
        qlist, item_key, item_start, item_end, num_keys = inverted_index(block_indices, T, block_size, num_blocks=nb)
    if fused and k.dtype != torch.float32:  # one fill; the casts below make separate outputs
        dk, dv = torch.zeros(2, B, T, HK, D, dtype=torch.float32, device=q.device).unbind(0)
    else:
        dk = torch.zeros(B, T, HK, D, dtype=torch.float32, device=q.device)
        dv = torch.zeros_like(dk)
    GP = next_pow2(G)
    BQ = max(1, 128 // GP)  # 128 (query, head) rows per step
    _dkdv_kernel[(item_key.numel(),)](
        q, k, v, do, lse, delta, dk, dv,
        qlist, item_key, item_start, item_end,
        T, HK, nb, num_keys,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *do.stride()[:3], *lse.stride(), *dk.stride()[:3],
        scale, scale * LOG2E,
        S=block_size, BS=tiles["BS"], BQ=BQ, G=G, GP=GP, D=D, BD=tiles["BD"], IEEE=ieee, WINDOW=window, **docs,
        num_warps=4, num_stages=2,
    )
    return dq, dk.to(k.dtype), dv.to(v.dtype)
