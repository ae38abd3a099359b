"""Triton kernels for sparse decode: T new queries per cache row (T=1: a generated token; T>1: a
chunk appended to the cache), rows of different lengths. Below, B counts query rows.

Three launches, none of which reads more than the block means and the selected blocks:

1. `_split_stats`  grid (B, HK, splits): each program scores BC complete-block means against the
   G query heads of its KV head, writes the logits and keeps per-head softmax partials (max, sum
   of exp).
2. `_split_topk`   grid (B, HK, splits): combines the partials into each head's exact normaliser,
   reads its BC x G logits back, sums the G probabilities into block scores (docs/design.md §1.1) and
   writes its local top n-1 as packed (score, block) keys, ties to the lower block.
3. `_merge_attend` grid (B, HK, attention splits): merges the local lists into the exact global
   top n-1 (the global top n-1 is a subset of the union of local top n-1s), adds the current block,
   and runs online-softmax attention of the G heads over its share of the selected blocks' keys
   (causal inside the current one); with several splits, `_combine` merges their partials
   (flash-decoding), so that one row with one KV head still spreads over the chip.

Splitting the scoring over programs matters at long context: at 128k tokens and s=16 there are 8192
block means per KV head, which one program would read far slower than the whole chip. The block
means are float32 and scored with IEEE float32 products, so the ranking matches the reference.
Bytes per block: the float32 mean once (4 D) plus G float32 logits written and read (8 G); for the
300M layout (D=64, G=16) that is 384 B against 4096 B of bf16 keys and values for full attention.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, interpreting, next_pow2

_LOW = tl.constexpr(2**31 - 1)  # low half of a packed rank key: _LOW - block id
BLOCKS_PER_SPLIT = 256  # at most this many block means per scoring program ([GP, BC] logits in registers)
TARGET_SPLITS = 32
ATTENTION_PROGRAMS = 128  # about one attention program per SM (an H100/H200 has 132)


@triton.jit
def _dot_t(a, b, IEEE: tl.constexpr):
    """a [M, K] @ b[N, K]^T with float32 accumulation."""
    if INTERPRET:
        return tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)))
    elif IEEE:
        return tl.dot(a, tl.trans(b), input_precision="ieee")
    else:
        return tl.dot(a, tl.trans(b))


@triton.jit
def _block_logits(q_ptr, kbar_ptr, b, cb, h, sp, ct, sq_b, sq_h, skb_b, skb_n, skb_h, scale,
                  G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BC: tl.constexpr):
    """Logits [GP, BC] of the group's heads against block means sp*BC.. (non-candidates -inf)."""
    offs_g = tl.arange(0, GP)
    offs_d = tl.arange(0, BD)
    offs_c = sp * BC + tl.arange(0, BC)
    q = tl.load(q_ptr + b * sq_b + (h * G + offs_g)[:, None] * sq_h + offs_d[None, :],
                mask=(offs_g < G)[:, None] & (offs_d < D)[None, :], other=0.0).to(tl.float32)
    kb = tl.load(kbar_ptr + cb * skb_b + offs_c[:, None] * skb_n + h * skb_h + offs_d[None, :],
                 mask=(offs_c < ct)[:, None] & (offs_d < D)[None, :], other=0.0)
    logits = _dot_t(q, kb, True) * scale
    return tl.where((offs_c < ct)[None, :], logits, float("-inf")), offs_g, offs_c


@triton.jit
def _split_stats(q_ptr, kbar_ptr, len_ptr, m_ptr, l_ptr, lg_ptr, sq_b, sq_h, skb_b, skb_n, skb_h, HK, NSP,
                 scale, QPR, S: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                 BC: tl.constexpr):
    b, h, sp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ct = (tl.load(len_ptr + b) - 1) // S  # current block = number of candidate blocks
    logits, offs_g, _ = _block_logits(q_ptr, kbar_ptr, b, b // QPR, h, sp, ct, sq_b, sq_h, skb_b, skb_n, skb_h, scale,
                                      G, GP, D, BD, BC)
    m = tl.max(logits, 1)
    m_safe = tl.where(m == float("-inf"), 0.0, m)  # a split with no candidates: l = 0
    l = tl.sum(tl.exp(logits - m_safe[:, None]), 1)
    split = (b * HK + h) * NSP + sp
    tl.store(m_ptr + split * GP + offs_g, m)
    tl.store(l_ptr + split * GP + offs_g, l)
    offs_c = tl.arange(0, BC)
    tl.store(lg_ptr + (split * G + offs_g)[:, None] * BC + offs_c[None, :], logits, mask=(offs_g < G)[:, None])


@triton.jit
def _split_topk(len_ptr, m_ptr, l_ptr, lg_ptr, ck_ptr, HK, NSP,
                S: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, BC: tl.constexpr, NSPP: tl.constexpr,
                NM1: tl.constexpr):
    b, h, sp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ct = (tl.load(len_ptr + b) - 1) // S
    # Each head's softmax normaliser over all candidates, from every split's partials.
    offs_s = tl.arange(0, NSPP)
    offs_gp = tl.arange(0, GP)
    part = ((b * HK + h) * NSP + offs_s)[:, None] * GP + offs_gp[None, :]
    ms = tl.load(m_ptr + part, mask=(offs_s < NSP)[:, None], other=float("-inf"))
    ls = tl.load(l_ptr + part, mask=(offs_s < NSP)[:, None], other=0.0)
    M = tl.max(ms, 0)
    M = tl.where(M == float("-inf"), 0.0, M)
    L = tl.sum(ls * tl.exp(ms - M[None, :]), 0)
    L = tl.where(L > 0, L, 1.0)

    split = (b * HK + h) * NSP + sp
    offs_g = tl.arange(0, GP)
    offs_c = sp * BC + tl.arange(0, BC)
    logits = tl.load(lg_ptr + (split * G + offs_g)[:, None] * BC + tl.arange(0, BC)[None, :],
                     mask=(offs_g < G)[:, None], other=float("-inf"))
    p = tl.exp(logits - M[:, None]) / L[:, None]
    p = tl.where((offs_g < G)[:, None] & (offs_c < ct)[None, :], p, 0.0)
    score = tl.sum(p, 0)  # candidates score in [0, G]
    key = tl.where(offs_c < ct, _rank_key(score, offs_c), -1)

    out = split * NM1
    for r in range(NM1):  # one reduction per winner: the packed key orders score, then block
        best = tl.max(key, 0)
        tl.store(ck_ptr + out + r, best)  # -1 once the split runs out of candidates
        key = tl.where(key == best, -1, key)


@triton.jit
def _rank_key(score, block):
    """int64 keys whose order is (score descending, block ascending) for scores >= 0.

    A non-negative float32's bit pattern orders like the float, so the score's bits go high and
    the complement of the block id low: one max-reduction finds the winner with ties to the lower
    block, instead of a max over scores followed by a min over the tied blocks."""
    bits = score.to(tl.int32, bitcast=True).to(tl.int64)
    return (bits << 32) | (block.to(tl.int64) * -1 + _LOW)


@triton.jit
def _key_block(key):
    """The block id of a packed key (-1 for an empty key)."""
    return tl.where(key >= 0, (key & _LOW).to(tl.int32) * -1 + _LOW, -1)


@triton.jit
def _merge_attend(q_ptr, k_ptr, v_ptr, len_ptr, ck_ptr, idx_ptr, o_ptr, pm_ptr, pl_ptr, pacc_ptr,
                  sq_b, sq_h, sk_b, sk_l, sk_h, so_b, so_h, HK, NSP, scale, QPR,
                  S: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                  SP: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, CB: tl.constexpr, MC: tl.constexpr,
                  NA: tl.constexpr, HAS_CAND: tl.constexpr, IEEE: tl.constexpr):
    # Program (b, h, a) merges the winners (every split of the attention repeats this small merge,
    # which costs less than another launch) and attends its share of the selected blocks: chunks
    # a * CPS .. of CB blocks. With NA > 1 it writes online-softmax partials for `_combine`.
    b, h, a = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = tl.load(len_ptr + b) - 1
    ct = t // S
    offs_n = tl.arange(0, NP)
    # Slot 0: the current block; slots 1..: the winners by descending score; -1: empty.
    sel = tl.where(offs_n == 0, ct, -1)
    if HAS_CAND:
        total = NSP * (N - 1)
        offs_m = tl.arange(0, MC)
        base = (b * HK + h) * total
        ck = tl.load(ck_ptr + base + offs_m, mask=offs_m < total, other=-1)
        for r in range(N - 1):  # (not `k`: the attention loop below reuses that name for keys)
            best = tl.max(ck, 0)
            sel = tl.where(offs_n == r + 1, _key_block(best), sel)
            ck = tl.where(ck == best, -1, ck)
    if a == 0:
        tl.store(idx_ptr + (b * HK + h) * N + offs_n, sel, mask=offs_n < N)

    offs_g = tl.arange(0, GP)
    offs_d = tl.arange(0, BD)
    offs_s = tl.arange(0, SP)
    gmask = offs_g < G
    dmask = offs_d < D
    q = tl.load(q_ptr + b * sq_b + (h * G + offs_g)[:, None] * sq_h + offs_d[None, :],
                mask=gmask[:, None] & dmask[None, :], other=0.0)
    m_i = tl.full([GP], float("-inf"), tl.float32)
    l_i = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, BD], tl.float32)
    # CB selected blocks per iteration, gathered as one [CB * SP] key tile: one pair of products per
    # chunk instead of a chain of dependent tiny loads and products per block.
    offs_j = tl.arange(0, CB)
    for c in range(a * (NP // CB // NA), (a + 1) * (NP // CB // NA)):
        blk = tl.sum(tl.where(offs_n[None, :] == (c * CB + offs_j)[:, None], sel[None, :], 0), 1)  # [CB]
        pos2 = blk[:, None] * S + offs_s[None, :]
        visible2 = (blk[:, None] >= 0) & (offs_s < S)[None, :] & (pos2 <= t)
        pos = tl.reshape(pos2, [CB * SP])
        visible = tl.reshape(visible2, [CB * SP])
        kv_off = (b // QPR) * sk_b + pos[:, None] * sk_l + h * sk_h + offs_d[None, :]
        kv_mask = visible[:, None] & dmask[None, :]
        k = tl.load(k_ptr + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + kv_off, mask=kv_mask, other=0.0)
        s = _dot_t(q, k, IEEE) * scale
        s = tl.where(visible[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # Nothing visible yet (a split holding only empty slots): a finite stand-in keeps exp() at
        # 0 instead of evaluating -inf - -inf.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if INTERPRET:
            pv = tl.dot(p, v.to(tl.float32))
        elif IEEE:
            pv = tl.dot(p, v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    if NA == 1:
        o = acc / l_i[:, None]
        tl.store(o_ptr + b * so_b + (h * G + offs_g)[:, None] * so_h + offs_d[None, :],
                 o.to(o_ptr.dtype.element_ty), mask=gmask[:, None] & dmask[None, :])
    else:  # a split with no visible key leaves m = -inf, l = 0, acc = 0: it weighs nothing
        part = (b * HK + h) * NA + a
        tl.store(pm_ptr + part * GP + offs_g, m_i)
        tl.store(pl_ptr + part * GP + offs_g, l_i)
        tl.store(pacc_ptr + (part * GP + offs_g)[:, None] * BD + offs_d[None, :], acc)


@triton.jit
def _combine(pm_ptr, pl_ptr, pacc_ptr, o_ptr, so_b, so_h, HK,
             G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, NA: tl.constexpr):
    """o of (b, h) from the NA attention splits' partials (split 0 holds the current block, so the
    running max is finite after it)."""
    b, h = tl.program_id(0), tl.program_id(1)
    offs_g = tl.arange(0, GP)
    offs_d = tl.arange(0, BD)
    m_i = tl.full([GP], float("-inf"), tl.float32)
    l_i = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, BD], tl.float32)
    for a in range(NA):
        part = (b * HK + h) * NA + a
        m = tl.load(pm_ptr + part * GP + offs_g)
        m_new = tl.maximum(m_i, m)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        beta = tl.exp(m - m_safe)
        l_i = l_i * alpha + tl.load(pl_ptr + part * GP + offs_g) * beta
        acc = acc * alpha[:, None] + tl.load(pacc_ptr + (part * GP + offs_g)[:, None] * BD + offs_d[None, :]) * beta[:, None]
        m_i = m_new
    o = acc / l_i[:, None]
    tl.store(o_ptr + b * so_b + (h * G + offs_g)[:, None] * so_h + offs_d[None, :],
             o.to(o_ptr.dtype.element_ty), mask=(offs_g < G)[:, None] & (offs_d < D)[None, :])


def sparse_decode_triton(q, k_cache, v_cache, kbar, lengths, block_size: int, block_count: int, scale: float,
                         bound: int, attention_splits: int | None = None):
    """o [B, T, HQ, D] and the selection [B, T, HK, n] (current block first, then by score, -1 empty).

    q is [B, T, HQ, D]: T new queries per cache row, query j at position lengths - T + j.
    Arguments are validated by `ssa.ops.decode.sparse_decode`. `bound` (a host int: the longest
    row, or the cache capacity) sizes the grid; everything that depends on the actual lengths is
    read on the device, so with bound = capacity a step can be captured in a CUDA graph once and
    replayed at every length (programs past a row's candidates find nothing to do).
    `attention_splits` (a power of two; default: enough to give the chip about ATTENTION_PROGRAMS
    programs) splits the attention over the selected blocks flash-decoding style, so one row with
    one KV head does not leave the chip idle; a small `_combine` launch merges the splits.
    """
    B, T, HQ, D = q.shape
    HK = k_cache.shape[2]
    G = HQ // HK
    R = B * T  # one program row per query; cache row = query row // T
    q = q.reshape(R, HQ, D)
    if q.stride(-1) != 1:
        q = q.contiguous()
    kbar = kbar.float()
    if kbar.stride(-1) != 1:
        kbar = kbar.contiguous()
    if k_cache.stride(-1) != 1 or v_cache.stride() != k_cache.stride():
        k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    lengths = lengths.to(device=q.device, dtype=torch.int32)
    if T > 1:  # each query's own length: its position + 1
        lengths = (lengths[:, None] - (T - 1) + torch.arange(T, device=q.device, dtype=torch.int32)).flatten()
    GP, BD, SP = next_pow2(max(G, 16)), next_pow2(max(D, 16)), next_pow2(max(block_size, 16))
    N, NP = block_count, next_pow2(max(block_count, 2))
    candidates = (bound - 1) // block_size
    # About TARGET_SPLITS programs per (query, KV head): enough to spread the block means over the
    # chip at B=1, few enough that merging nsp * (n-1) local winners stays cheap.
    BC = min(BLOCKS_PER_SPLIT, next_pow2(max(triton.cdiv(max(candidates, 1), TARGET_SPLITS), 16)))
    has_cand = candidates > 0 and N > 1
    nsp = triton.cdiv(candidates, BC) if has_cand else 1
    idx = torch.empty(R, HK, N, dtype=torch.int32, device=q.device)
    o = torch.empty_like(q)
    ck = idx  # a placeholder when there is nothing to score
    if has_cand:
        m = torch.empty(R, HK, nsp, GP, dtype=torch.float32, device=q.device)
        l = torch.empty_like(m)
        lg = torch.empty(R, HK, nsp, G, BC, dtype=torch.float32, device=q.device)
        ck = torch.empty(R, HK, nsp, N - 1, dtype=torch.int64, device=q.device)
        _split_stats[(R, HK, nsp)](
            q, kbar, lengths, m, l, lg, q.stride(0), q.stride(1), kbar.stride(0), kbar.stride(1), kbar.stride(2),
            HK, nsp, scale, T, S=block_size, G=G, GP=GP, D=D, BD=BD, BC=BC,
        )
        _split_topk[(R, HK, nsp)](lengths, m, l, lg, ck, HK, nsp, S=block_size, G=G, GP=GP, BC=BC,
                                  NSPP=next_pow2(nsp), NM1=N - 1)
    NA = attention_splits or min(NP, next_pow2(max(1, ATTENTION_PROGRAMS // (R * HK))))
    if attention_splits is None and interpreting():  # programs run one by one there: few repeated merges
        NA = min(NA, 2)
    if NA < 1 or NA & (NA - 1) or NA > NP:
        raise ValueError(f"attention_splits must be a power of two in [1, {NP}], got {NA}")
    # Keys gathered per attention chunk: 256 half-precision keys fit in shared memory with room to
    # spare; float32 products in IEEE mode need about 4x more, hence 64.
    chunk_keys = 64 if q.dtype == torch.float32 else 256
    CB = min(NP // NA, max(1, chunk_keys // SP))
    pm = pl = pacc = o  # placeholders without splits
    if NA > 1:
        pm = torch.empty(R, HK, NA, GP, dtype=torch.float32, device=q.device)
        pl = torch.empty_like(pm)
        pacc = torch.empty(R, HK, NA, GP, BD, dtype=torch.float32, device=q.device)
    _merge_attend[(R, HK, NA)](
        q, k_cache, v_cache, lengths, ck, idx, o, pm, pl, pacc,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), o.stride(0), o.stride(1),
        HK, nsp, scale, T, S=block_size, G=G, GP=GP, D=D, BD=BD, SP=SP, N=N, NP=NP,
        CB=CB, MC=next_pow2(max(nsp * (N - 1), 2)) if has_cand else 2, NA=NA,
        HAS_CAND=has_cand, IEEE=q.dtype == torch.float32, num_warps=4 if NA > 1 else 8,
    )
    if NA > 1:
        _combine[(R, HK)](pm, pl, pacc, o, o.stride(0), o.stride(1), HK, G=G, GP=GP, D=D, BD=BD, NA=NA)
    return o.view(B, T, HQ, D), idx.view(B, T, HK, N)
