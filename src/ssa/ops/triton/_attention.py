"""Block-sparse attention over selected key blocks: forward (with log-sum-exp) and backward.

Forward and dq: one program per (query, batch, KV head); its rows are the G query heads of the group
(padded to GP >= 16 rows for the tensor cores). It walks the query's n block slots BPI blocks at a
time, gathering the keys of each slot, so one tile holds BPI * BS keys.

dk and dv: an inverted index lists, for every (batch, KV head, key block), the queries that selected
it (`_index.py`: the dq kernel counts the selections, two more launches place them). A program takes
one segment of at most `seg` queries of one key
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

# Queries per dk/dv work item (the default of `sparse_backward`'s `seg`). The mean list length is
# T * n / num_blocks = n * s (256 at the defaults), so a block needs about two items and a block
# picked by every query is spread over T / seg programs. Shorter segments mean more parallel
# programs (short sequences have few blocks) for a little more atomic traffic (s * D floats per item).
DEFAULT_SEG = 128


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
def _query_rows(q_ptr, k_ptr, v_ptr, idx_ptr, T, HK, sq_b, sq_t, sq_h, sk_b, sk_h, sv_b, sv_h, si_b, si_h,
                QB: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr):
    """What a forward or dq program works on: rows (query, head) of QB consecutive queries of one
    (batch, KV head). Returns the first query, batch (int64: batch offsets can pass 2^31 elements),
    KV head, each row's query (0..QB-1), position, validity and head, the head-dim lanes and their
    validity, q [QB * GP, BD] and the index, key and value base pointers."""
    t0 = tl.program_id(0) * QB
    bh = tl.program_id(1)
    b = (bh // HK).to(tl.int64)
    hk = bh % HK
    r = tl.arange(0, QB * GP)
    rq = r // GP
    g = r % GP
    t_r = t0 + rq
    row_ok = (g < G) & (t_r < T)
    d = tl.arange(0, BD)
    d_ok = d < D
    heads = hk * G + g
    q = tl.load(q_ptr + b * sq_b + t_r[:, None] * sq_t + heads[:, None] * sq_h + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    return (t0, b, hk, rq, t_r, row_ok, heads, d, d_ok, q,
            idx_ptr + b * si_b + hk * si_h, k_ptr + b * sk_b + hk * sk_h, v_ptr + b * sv_b + hk * sv_h)


@triton.jit
def _slot_tile(q, idx_base, k_base, v_base, si_t, sk_t, sv_t, it, t0, T, rq, d, d_ok, scale2,
               S: tl.constexpr, BS: tl.constexpr, BPI: tl.constexpr, N: tl.constexpr, QB: tl.constexpr,
               GP: tl.constexpr, IEEE: tl.constexpr, WINDOW: tl.constexpr, bstart_ptr, DOCS: tl.constexpr):
    """Step `it` of the forward and dq loops: the gathered keys and values of the step's block slots,
    the scaled logits [QB * GP, QB * BPI * BS] (log2 domain) and which of them each row may see."""
    pos, jq, ok = _gather_slot_keys(idx_base, si_t, it, t0, T, S, BS, BPI, N, QB, WINDOW, bstart_ptr, DOCS)
    kv_mask = ok[:, None] & d_ok[None, :]
    k = tl.load(k_base + pos[:, None] * sk_t + d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + pos[:, None] * sv_t + d[None, :], mask=kv_mask, other=0.0)
    x = mma(q, tl.trans(k), tl.zeros((QB * GP, QB * BPI * BS), tl.float32), IEEE) * scale2
    # Each query gathers its own keys, so a row only sees its own query's keys (block-diagonal).
    mine = ok[None, :] & (jq[None, :] == rq[:, None])
    return k, v, x, mine


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
    # Rows are (query, head) pairs of QB consecutive queries. On the GPU QB is 1; larger QB only
    # serves the CPU interpreter, where it cuts the number of programs.
    t0, b, hk, rq, t_r, row_ok, heads, d, d_ok, q, idx_base, k_base, v_base = _query_rows(
        q_ptr, k_ptr, v_ptr, idx_ptr, T, HK, sq_b, sq_t, sq_h, sk_b, sk_h, sv_b, sv_h, si_b, si_h, QB, G, GP, D, BD)
    row_mask = row_ok[:, None] & d_ok[None, :]
    m = tl.full((QB * GP,), float("-inf"), tl.float32)
    l = tl.zeros((QB * GP,), tl.float32)
    acc = tl.zeros((QB * GP, BD), tl.float32)
    for it in range(0, tl.cdiv(N, BPI)):
        k, v, x, mine = _slot_tile(q, idx_base, k_base, v_base, si_t, sk_t, sv_t, it, t0, T, rq, d, d_ok, scale2,
                                   S, BS, BPI, N, QB, GP, IEEE, WINDOW, bstart_ptr, DOCS)
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
    HAS_DLSE: tl.constexpr, WINDOW: tl.constexpr, counts_ptr, NB, NP: tl.constexpr,
    bstart_ptr=None, DOCS: tl.constexpr = False,
):
    # Same tiling as the forward; recomputes p from the saved lse. Also computes
    # delta = rowsum(dO * O) - dlse here and stores it for the dk/dv kernel, so no [B, T, HQ, D]
    # float32 temporaries are made (a gradient on lse adds p * dlse to dS).
    t0, b, hk, rq, t_r, row_ok, heads, d, d_ok, q, idx_base, k_base, v_base = _query_rows(
        q_ptr, k_ptr, v_ptr, idx_ptr, T, HK, sq_b, sq_t, sq_h, sk_b, sk_h, sv_b, sv_h, si_b, si_h, QB, G, GP, D, BD)
    row_mask = row_ok[:, None] & d_ok[None, :]
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
    # Selections per (batch, KV head, key block), counted here for the inverted index (`_index.py`).
    ct = t0 + tl.arange(0, QB)
    cs = tl.arange(0, NP)
    cblk = tl.load(idx_base + ct[:, None] * si_t + cs[None, :], mask=(ct < T)[:, None] & (cs < N)[None, :], other=-1)
    cvalid = (cblk >= 0) & (cblk < NB)
    tl.atomic_add(counts_ptr + (b * HK + hk) * NB + cblk, tl.full(cblk.shape, 1, tl.int32), mask=cvalid)

    dq = tl.zeros((QB * GP, BD), tl.float32)
    for it in range(0, tl.cdiv(N, BPI)):
        k, v, x, mine = _slot_tile(q, idx_base, k_base, v_base, si_t, sk_t, sv_t, it, t0, T, rq, d, d_ok, scale2,
                                   S, BS, BPI, N, QB, GP, IEEE, WINDOW, bstart_ptr, DOCS)
        p = tl.where(mine & row_ok[:, None], tl.exp2(x - lse2[:, None]), 0.0)
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


def sparse_backward(do, q, k, v, o, lse, dlse, block_indices, block_size: int, scale: float, window: int = 0,
                    block_starts=None, seg: int = DEFAULT_SEG):
    """dq, dk, dv of block-sparse attention; dlse (or None) is the gradient reaching lse (block_starts:
    packed documents, as in `sparse_forward`). seg: queries per dk/dv work item (any value gives
    the same gradients up to the order of the atomic adds; tests force short ones)."""
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
    block_indices = block_indices.contiguous()
    counts = torch.zeros(B * HK * nb, dtype=torch.int32, device=q.device)  # filled by the dq kernel
    _dq_kernel[(triton.cdiv(T, tiles["QB"]), B * HK)](
        q, k, v, block_indices, o, do, lse, dlse if dlse is not None else lse, delta, dq,
        T, HK,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *block_indices.stride()[:3],
        *o.stride()[:3], *do.stride()[:3], *lse.stride(), *dq.stride()[:3],
        scale, scale * LOG2E,
        N=n, G=G, D=D, IEEE=ieee, HAS_DLSE=dlse is not None, WINDOW=window, **tiles,
        counts_ptr=counts, NB=nb, NP=max(16, next_pow2(n)), **docs,
        num_warps=4, num_stages=2,
    )

    qlist, item_key, item_start, item_end, num_keys = _index.inverted_index_from_counts(
        block_indices, counts, T, block_size, seg, nb)
    if k.dtype != torch.float32:  # one fill; the casts below make separate outputs
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
