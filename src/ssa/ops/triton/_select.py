"""Fused exact top-k block selection (docs/design.md §1.1) in one Triton kernel.

One program handles BQ consecutive queries of one (batch, KV head) and all G query heads of the
group, so its tile has BQ * GP rows (GP = G rounded up to a power of two, padded heads masked).

Pass 1 streams over the candidate block keys and sums, per (query, head) row, the softmax normaliser
(the exp of every logit under a shift known before the scan, see below). Pass 2 recomputes the same logits tile by tile, turns them
into probabilities, sums them over the group and merges each tile into a per-query top-K buffer held
in registers. Nothing of size T x T/s is ever written to memory.

Exact top-k with ties to the lower index: a score in [0, G] is a non-negative float, so its bit
pattern orders like the float. Each candidate becomes one int64 key
    (score bits << 32) | (2**31 - 1 - block)   [computed as block ^ (2**31 - 1)]
which is unique and orders by score, then by *lower* block first. The buffer keeps the N-1 largest
keys seen so far, unsorted (threshold insertion): a tile's entries are compared with the buffer's
minimum, the current (N-1)-th best, and only those above it are inserted, largest first, one per
round. After m blocks a tile of BN blocks holds about BN * (N-1) / m such entries per query, so the
rounds die out as the scan advances and the steady state is a max-reduction per tile and no sort.

The block keys (means of k) are precomputed in float32 and split into a sum of NSPLIT half-precision
parts (hi + lo), so two bf16 tensor-core products give the logits to about 2^-16 relative accuracy
instead of the 2^-8 of a single bf16 rounding: the ranking then matches the float32 reference except
between scores that are equal to within float rounding.

Nsight Compute shows the integer ALU pipe as this kernel's limit, so the per-logit path is kept short:
  - Pass 1 needs no running maximum. Any shift m >= every logit of a row gives the same softmax, and
    Cauchy-Schwarz gives one before the scan: |q . kbar_c| <= |q| max_c |kbar_c|. Each logit then
    costs one FMA, one exp2 and one add (no row max, no rescaling exp, and a shorter MMA -> exp
    dependency chain). If the bound is so loose that a row's sum falls below 2^-40 (logits far below
    their Cauchy-Schwarz bound, possible for trained models with large norms), the program recomputes
    the normalisers with an online maximum, so precision never depends on the bound.
  - When BQ divides s, every query of a program lies in one s-token block and shares the candidate
    set c < c_cur, so only the last, partial tile needs candidate masks and masked loads.
  - Top-k insertion compares float32 scores; only the entries inserted become int64 keys.
  - The scale is folded into the exp argument (one FMA per logit).
  - A register cap lets four programs share an SM where it does not make the compiler spill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import LOG2E, interpreting, mma, next_pow2

# Block b is stored as b ^ _LOW_MAX == _LOW_MAX - b in the low word of a key (lower block, larger key).
_LOW_MAX = tl.constexpr(2**31 - 1)
# Buffer slots beyond N-1 hold the largest int64, above every key, so they are never the minimum. (A
# score of 2.0 or more, possible whenever the group has G >= 2 heads, has float bits >= 0x40000000, so
# its key reaches 2^62: the padding must sit above the whole non-negative key range.)
_PAD = tl.constexpr(2**63 - 1)


@triton.jit
def _kbar_logits(q, kb_base, c0, NBF, stride_n, stride_part,
                 BN: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                 NSPLIT: tl.constexpr, IEEE: tl.constexpr, EVEN: tl.constexpr = False):
    """q [R, BD] @ kbar[c0:c0+BN]^T, summing the NSPLIT precision parts; fp32 [R, BN].

    EVEN: the caller guarantees c0 + BN <= NBF and BD == D, so the loads need no mask (a compare
    per loaded element less on the integer pipe, which bounds the selection kernel)."""
    offs_c = c0 + tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    ptrs = kb_base + offs_c[None, :] * stride_n + offs_d[:, None]
    acc = tl.zeros((q.shape[0], BN), dtype=tl.float32)
    for part in tl.static_range(NSPLIT):
        if EVEN:
            kt = tl.load(ptrs + part * stride_part)
        else:
            kt = tl.load(ptrs + part * stride_part, mask=(offs_c < NBF)[None, :] & (offs_d < D)[:, None], other=0.0)
        acc = mma(q, kt, acc, IEEE)
    return acc


@triton.jit
def _program_rows(q_ptr, kb_ptr, T, HK, sq_b, sq_t, sq_h, skb_b, skb_h,
                  S: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, BQ: tl.constexpr,
                  D: tl.constexpr, BD: tl.constexpr,
                  bstart_ptr=None, bfirst_ptr=None, DOCS: tl.constexpr = False):
    """What a selection program works on: BQ queries x GP heads of one (batch, KV head) as rows.

    Returns the query tile index, batch (int64: batch offsets can pass 2^31 elements), KV head, the
    valid-row mask, each row's own block, q [BQ * GP, BD], the block-key base pointer, c_end (no
    query of the tile has a candidate block >= c_end), c_lo (nor one < c_lo), and the tile's query
    positions, own blocks and validity [BQ].

    DOCS (packed documents, `_documents.py`): programs tile the global block grid (each document
    padded to whole blocks), BQ divides S, so a program's queries lie in one block gb of one
    document: candidates are that document's blocks before gb. Query t sits at grid position
    t + shift, so block arithmetic is unchanged; only loads and stores use t."""
    # Later query tiles have more candidates: launch them first so the tail of the grid is short.
    pid_q = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HK).to(tl.int64)
    hk = bh % HK
    rows = tl.arange(0, BQ * GP)
    p_row = pid_q * BQ + rows // GP  # grid position (the query position without documents)
    p_q = pid_q * BQ + tl.arange(0, BQ)
    g_row = rows % GP
    if DOCS:
        gb = (pid_q * BQ) // S
        start = tl.load(bstart_ptr + gb)
        shift = gb * S - start
        count = tl.load(bstart_ptr + gb + 1) - start  # tokens of block gb (0 past the last block)
        row_ok = (p_row - gb * S < count) & (g_row < G)
        q_ok = p_q - gb * S < count
        c_lo = tl.load(bfirst_ptr + gb)
        c_end = tl.where(pid_q * BQ - gb * S < count, gb, c_lo)  # an empty tile scans nothing
    else:
        shift = 0
        row_ok = (p_row < T) & (g_row < G)
        q_ok = p_q < T
        c_lo = 0
        c_end = tl.minimum(pid_q * BQ + BQ - 1, T - 1) // S
    offs_d = tl.arange(0, BD)
    q = tl.load(
        q_ptr + b * sq_b + (p_row - shift)[:, None] * sq_t + (hk * G + g_row)[:, None] * sq_h + offs_d[None, :],
        mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0,
    )
    return (pid_q, b, hk, row_ok, p_row // S, q, kb_ptr + b * skb_b + hk * skb_h, c_end, c_lo,
            p_q - shift, p_q // S, q_ok)


@triton.jit
def _online_normalisers(q, kb_base, c_lo, c_end, NBF, skb_n, skb_part, cur_row, row_ok, scale2,
                        R: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                        NSPLIT: tl.constexpr, IEEE: tl.constexpr):
    """Per-row (max, sum of exp2(logit - max)) over the candidates c_lo <= c < cur_row, online (log2 domain)."""
    m = tl.full((R,), float("-inf"), tl.float32)
    l = tl.zeros((R,), tl.float32)
    for c0 in range(c_lo, c_end, BN):
        x = _kbar_logits(q, kb_base, c0, NBF, skb_n, skb_part, BN, D, BD, NSPLIT, IEEE) * scale2
        cand = ((c0 + tl.arange(0, BN))[None, :] < cur_row[:, None]) & row_ok[:, None]
        x = tl.where(cand, x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no candidate yet
        l = l * tl.exp2(m - m_safe) + tl.sum(tl.exp2(x - m_safe[:, None]), 1)
        m = m_new
    return tl.where(m == float("-inf"), 0.0, m), l


@triton.jit
def _tile_probs(q, kb_base, c0, NBF, skb_n, skb_part, m, inv_l, cur_row, row_ok, scale2,
                BN: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, NSPLIT: tl.constexpr, IEEE: tl.constexpr,
                MASKED: tl.constexpr, NORMALISED: tl.constexpr):
    """exp2(logit * scale2 - m) of blocks c0 .. c0+BN-1 per row, [R, BN], times inv_l if NORMALISED.

    MASKED: zero outside each row's candidates, with masked loads. Unmasked tiles are those below
    c_full, where the caller knows every block is a candidate of every row and within NBF."""
    if MASKED:
        x = _kbar_logits(q, kb_base, c0, NBF, skb_n, skb_part, BN, D, BD, NSPLIT, IEEE)
        cand = ((c0 + tl.arange(0, BN))[None, :] < cur_row[:, None]) & row_ok[:, None]
    else:
        x = _kbar_logits(q, kb_base, c0, NBF, skb_n, skb_part, BN, D, BD, NSPLIT, IEEE, BD == D)
    e = tl.exp2(x * scale2 - m[:, None])
    if NORMALISED:
        e = e * inv_l[:, None]
    if MASKED:
        e = tl.where(cand, e, 0.0)
    return e


@triton.jit
def _merge_tile(buf, kth, q, kb_base, c0, NBF, skb_n, skb_part, m, inv_l, cur_row, row_ok, cur_q, scale2,
                BN: tl.constexpr, BQ: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                NSPLIT: tl.constexpr, IEEE: tl.constexpr, MASKED: tl.constexpr):
    """Pass 2 for one tile: group scores of blocks c0 .. c0+BN-1 merged into the top-(N-1) buffer."""
    p = _tile_probs(q, kb_base, c0, NBF, skb_n, skb_part, m, inv_l, cur_row, row_ok, scale2,
                    BN, D, BD, NSPLIT, IEEE, MASKED, True)
    score = _nan_first(tl.sum(tl.reshape(p, (BQ, GP, BN)), 1))  # [BQ, BN], the sum over the group
    blk = c0 + tl.arange(0, BN)
    if MASKED:  # the query's own block and later ones are no candidates
        score = tl.where(blk[None, :] < cur_q[:, None], score, -2.0)
    return _insert_scores(buf, kth, score, blk)


@triton.jit
def _select_kernel(
    q_ptr, kb_ptr, kn_ptr, out_ptr,
    T, HK, NBF,
    sq_b, sq_t, sq_h,
    skb_b, skb_h, skb_part, skb_n,
    so_b, so_t, so_h,
    scale2,
    S: tl.constexpr, N: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, BQ: tl.constexpr,
    D: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, BN1: tl.constexpr,
    NSPLIT: tl.constexpr, IEEE: tl.constexpr, UNIFORM: tl.constexpr,
    bstart_ptr=None, bfirst_ptr=None, DOCS: tl.constexpr = False,
):
    R: tl.constexpr = BQ * GP
    pid_q, b, hk, row_ok, cur_row, q, kb_base, c_end, c_lo, t_q, cur_q, q_ok = _program_rows(
        q_ptr, kb_ptr, T, HK, sq_b, sq_t, sq_h, skb_b, skb_h, S, G, GP, BQ, D, BD, bstart_ptr, bfirst_ptr, DOCS)
    if UNIFORM:
        c_full = c_lo + ((c_end - c_lo) // BN1) * BN1  # tiles below c_full hold candidates of every row
    else:
        c_full = c_lo

    # Pass 1: per-row normalisers l = sum_c exp2(x_c - m), x = logit * scale * log2(e), with the
    # Cauchy-Schwarz shift m.
    qf = q.to(tl.float32)
    m = tl.sqrt(tl.sum(qf * qf, 1)) * tl.load(kn_ptr + tl.program_id(1))  # kn = |scale2| max_c |kbar_c|, padded
    l = tl.zeros((R,), tl.float32)
    for c0 in range(c_lo, c_full, BN1):
        l += tl.sum(_tile_probs(q, kb_base, c0, NBF, skb_n, skb_part, m, l, cur_row, row_ok, scale2,
                                BN1, D, BD, NSPLIT, IEEE, False, False), 1)
    for c0 in range(c_full, c_end, BN1):
        l += tl.sum(_tile_probs(q, kb_base, c0, NBF, skb_n, skb_part, m, l, cur_row, row_ok, scale2,
                                BN1, D, BD, NSPLIT, IEEE, True, False), 1)
    # Also NaN: a non-finite key anywhere makes the shared bound inf or NaN; the exact pass then
    # keeps the rows whose own candidates are finite finite.
    loose = row_ok & (cur_row > c_lo) & ~(l >= 2.0 ** -40)
    if tl.max(loose.to(tl.int32)) > 0:
        m, l = _online_normalisers(q, kb_base, c_lo, c_end, NBF, skb_n, skb_part, cur_row, row_ok, scale2,
                                   R, BN1, D, BD, NSPLIT, IEEE)
    # Padded heads, rows past T and rows without candidates score nothing; a NaN sum (a non-finite
    # input among the row's candidates) stays NaN, as in the reference.
    inv_l = tl.where((l == 0) | ~row_ok, 0.0, 1.0 / l)

    # Pass 2: group scores into the unsorted top-(N-1) buffer by threshold insertion. Buffer slots
    # beyond N-1 hold _PAD (never replaced); empty slots hold distinct negative fillers so that the
    # minimum, the current K-th best, is unique.
    slot = tl.arange(0, KB)[None, :]
    buf = tl.where(slot < N - 1, -1 - slot.to(tl.int64), _PAD) + tl.zeros((BQ, KB), tl.int64)
    kth = tl.min(buf, 1)
    for c0 in range(c_lo, c_full, BN1):
        buf, kth = _merge_tile(buf, kth, q, kb_base, c0, NBF, skb_n, skb_part, m, inv_l, cur_row, row_ok, cur_q,
                               scale2, BN1, BQ, GP, D, BD, NSPLIT, IEEE, False)
    for c0 in range(c_full, c_end, BN1):
        buf, kth = _merge_tile(buf, kth, q, kb_base, c0, NBF, skb_n, skb_part, m, inv_l, cur_row, row_ok, cur_q,
                               scale2, BN1, BQ, GP, D, BD, NSPLIT, IEEE, True)

    _store_selection(out_ptr, buf, slot, cur_q, t_q, q_ok, c_lo, b, hk, so_b, so_t, so_h, N, KB)


@triton.jit
def _nan_first(score):
    """NaN group scores (a non-finite input reached the row's softmax) become the largest float, so
    they rank above every number, ties to the lower block, as in the reference's `top_blocks`."""
    return tl.where(score == score, score, 3.4028234663852886e38)


@triton.jit
def _key_score(kth):
    """The float32 score held in a key's high word; -1 for the negative fillers of empty slots."""
    return tl.where(kth >= 0, (kth >> 32).to(tl.int32).to(tl.float32, bitcast=True), -1.0)


@triton.jit
def _insert_scores(buf, kth, score, blk):
    """Threshold insertion of a tile of float32 group scores [BQ, BN] (non-candidates < 0) of blocks
    blk [BN] into the int64 key buffer: the same buffer as inserting every entry's int64 key above the
    K-th best, largest first, with float32 work per element instead of int64 (the integer ALU pipe
    bounds this kernel).

    A strictly larger score than the K-th best's is needed: blocks are scanned in ascending order and
    equal scores within a tile are taken lowest block first, so an entry that only ties the K-th best
    always has the larger block and loses the tie. (A `>=` test would stay exact but spend one round
    per tied entry, e.g. per block of a row whose probabilities underflow to 0.) Each round takes, per
    query, the largest remaining score and its lowest block, turns that one entry into its int64 key,
    inserts it and drops it from the tile, so every round removes one entry per active query.
    """
    kth_s = _key_score(kth)
    s = tl.where(score > kth_s[:, None], score, -2.0)
    top = tl.max(s, 1)
    active = (top >= 0) & (top > kth_s)
    while tl.max(active.to(tl.int32)) > 0:
        b_top = tl.min(tl.where(s == top[:, None], blk[None, :], 2**30), 1)
        key = (top.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (b_top ^ _LOW_MAX).to(tl.int64)
        put = active & (key > kth)
        buf = tl.where((buf == kth[:, None]) & put[:, None], key[:, None], buf)
        kth = tl.min(buf, 1)
        kth_s = _key_score(kth)
        taken = (blk[None, :] == b_top[:, None]) & active[:, None]
        s = tl.where((s > kth_s[:, None]) & ~taken, s, -2.0)
        top = tl.max(s, 1)
        active = (top >= 0) & (top > kth_s)
    return buf, kth


@triton.jit
def _store_selection(out_ptr, buf, slot, cur_q, t_q, q_ok, c_lo, b, hk, so_b, so_t, so_h,
                     N: tl.constexpr, KB: tl.constexpr):
    """Write the top N-1 blocks of the key buffer plus the current block, ascending, -1 padding last,
    as ids relative to block c_lo (the first block of the queries' document; 0 without documents)."""
    best = ((buf & _LOW_MAX) ^ _LOW_MAX).to(tl.int32)
    BIG: tl.constexpr = 2**30
    sel = tl.where((buf >= 0) & (buf != _PAD), best, BIG)
    sel = tl.where(slot == N - 1, cur_q[:, None], sel)  # the first _PAD slot (N-1 < KB)
    sel = tl.sort(sel, 1)
    sel = tl.where(sel == BIG, -1, sel - c_lo)
    tl.store(out_ptr + b * so_b + t_q[:, None] * so_t + hk * so_h + slot, sel,
             mask=q_ok[:, None] & (slot < N))


@triton.jit
def _block_keys_kernel(
    k_ptr, kb_ptr, kn_ptr, HK,
    sk_b, sk_t, sk_h, skb_b, skb_h, skb_part, skb_n,
    factor,
    S: tl.constexpr, SP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, NSPLIT: tl.constexpr,
    bstart_ptr=None, DOCS: tl.constexpr = False,
):
    """kb[b, hk, part, c] = part `part` of the float32 mean of key block c; kn[b * HK + hk] = factor *
    the largest norm of a block mean (atomic max over the blocks, kn zero on entry). DOCS: c is a
    block of the document block table; a partial block is never a candidate (its sum / S only
    enters the bound, which stays an upper bound)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HK).to(tl.int64)
    hk = bh % HK
    j = tl.arange(0, SP)
    d = tl.arange(0, BD)
    if DOCS:
        first = tl.load(bstart_ptr + c)
        rows = j < tl.load(bstart_ptr + c + 1) - first  # a partial block's mean is never used
    else:
        first = c * S
        rows = j < S
    x = tl.load(k_ptr + b * sk_b + (first + j)[:, None].to(tl.int64) * sk_t + hk * sk_h + d[None, :],
                mask=rows[:, None] & (d < D)[None, :], other=0.0)
    mean = tl.sum(x.to(tl.float32), 0) / S
    tl.atomic_max(kn_ptr + bh, tl.sqrt(tl.sum(mean * mean, 0)) * factor)
    out = kb_ptr + b * skb_b + hk * skb_h + c.to(tl.int64) * skb_n + d
    rest = mean
    for part in tl.static_range(NSPLIT):
        piece = rest.to(kb_ptr.dtype.element_ty)
        tl.store(out + part * skb_part, piece, mask=d < D)
        rest = rest - piece.to(tl.float32)


def block_keys_and_bound(k: torch.Tensor, block_size: int, nsplit: int, factor: float, table=None):
    """Means of the complete key blocks, each split into `nsplit` parts of k's dtype that sum (in
    float32) to the float32 mean: [B, HK, nsplit, T // s, D], one Triton launch. Also factor *
    max_c |kbar_c| per (batch, KV head) as float32 [B * HK] (zeros when there is no block).
    With a document block `table` (`_documents.py`) the blocks are its blocks: [..., NB, D]."""
    B, T, HK, D = k.shape
    nbf = T // block_size if table is None else table.num_blocks
    kb = torch.empty(B, HK, nsplit, nbf, D, dtype=k.dtype, device=k.device)
    kn = torch.zeros(B * HK, dtype=torch.float32, device=k.device)
    if B * HK * nbf:
        _block_keys_kernel[(nbf, B * HK)](
            k, kb, kn, HK, *k.stride()[:3], kb.stride(0), kb.stride(1), kb.stride(2), kb.stride(3), factor,
            S=block_size, SP=next_pow2(block_size), D=D, BD=max(16, next_pow2(D)), NSPLIT=nsplit,
            bstart_ptr=None if table is None else table.block_starts, DOCS=table is not None, num_warps=1,
        )
    return kb, kn


def _power_of_two(x) -> bool:
    return isinstance(x, int) and x > 0 and x & (x - 1) == 0


@dataclass(frozen=True)
class SelectLaunch:
    """Launch settings of the selection kernel. The defaults serve every shape: they are the fastest
    measured at the benchmark shape (HQ=16, HK=1, d=64, s=16, n=16, bf16; benchmarks/ab.py times
    alternatives by passing another instance to `select_blocks`), and `_launch_shape` derives the
    tile from them per shape. No setting changes the answer, only the speed."""

    rows: int = 128  # (query, head) rows per program: a full tensor-core tile
    block_tile: int = 32  # candidate blocks per tile
    num_warps: int = 4
    num_stages: int = 3  # software-pipelining depth of the block-key loads (hides their latency at long T)
    # Register cap per thread: four programs of four warps per SM. Wider shapes (d=128, n>16, small
    # groups) would spill under it, so a launch shape that spilled runs uncapped (`_launch_capped`).
    maxnreg: int | None = 128

    def __post_init__(self):
        for name in ("rows", "block_tile"):
            if not (_power_of_two(getattr(self, name)) and getattr(self, name) >= 16):
                raise ValueError(f"SelectLaunch.{name} must be a power of two >= 16, got {getattr(self, name)!r}")
        if not (_power_of_two(self.num_warps) and self.num_warps <= 32):
            raise ValueError(f"SelectLaunch.num_warps must be a power of two <= 32, got {self.num_warps!r}")
        if not (isinstance(self.num_stages, int) and self.num_stages >= 1):
            raise ValueError(f"SelectLaunch.num_stages must be an int >= 1, got {self.num_stages!r}")
        if self.maxnreg is not None and not (isinstance(self.maxnreg, int) and self.maxnreg > 0):
            raise ValueError(f"SelectLaunch.maxnreg must be None or a positive int, got {self.maxnreg!r}")


DEFAULT_LAUNCH = SelectLaunch()


def select_blocks(q: torch.Tensor, k: torch.Tensor, block_size: int, block_count: int, scale: float,
                  table=None, launch: SelectLaunch = DEFAULT_LAUNCH) -> torch.Tensor:
    """Launch the fused selection kernel. q, k fp16/bf16/fp32 with unit stride in the last dim.

    table: the block table of packed documents (`_documents.py`; batch 1), or None."""
    B, T, HQ, D = q.shape
    HK = k.shape[2]
    G = HQ // HK
    out = torch.empty(B, T, HK, block_count, dtype=torch.int32, device=q.device)
    if B * T == 0:
        return out
    ieee = q.dtype == torch.float32
    # fp16 has a narrow exponent range, so its low part may lose bits to subnormals; a third part
    # costs one more product and keeps it accurate.
    nsplit = 1 if ieee else (2 if q.dtype == torch.bfloat16 else 3)
    KB, BQ, GP, BD = _launch_shape(G, block_count, D, launch.rows)
    grid_len = T
    docs = {}
    if table is not None:
        # Programs must not straddle blocks (so not documents either): BQ divides the block size.
        BQ = min(BQ, block_size & -block_size)
        GP = max(next_pow2(G), 16 // BQ)
        grid_len = table.num_blocks * block_size  # every document padded to whole blocks
        docs = dict(bstart_ptr=table.block_starts, bfirst_ptr=table.block_first, DOCS=True)
    scale2 = scale * LOG2E
    # enable_fp_fusion=False: equal probabilities must give equal group scores, or exact ties would
    # not go to the lower block. With contraction on, the compiler fused one head's product e * (1/l)
    # into the group sum's add as an FMA in some registers of a tile and not in others (it depends on
    # the register layout), so tied blocks scored an ulp apart; on an H200, fp32 inputs at 128 rows per
    # program got the wrong tied blocks in 55 of 240 rows (benchmarks/select_ties_check.py;
    # tests/test_select_codegen.py checks the generated code for such FMAs without a GPU).
    # The pass-1 shift bound per (batch, KV head) is |scale2| max_c |kbar_c|, padded by 2^-8 for the
    # rounding of the products (the parts sum to kbar within 2^-16) and of the norm itself.
    kb, knorm = block_keys_and_bound(k, block_size, nsplit, abs(scale2) * (1 + 2.0 ** -8), table)
    _launch_capped(
        _select_kernel, (triton.cdiv(grid_len, BQ), B * HK), launch.maxnreg,
        (q, kb, knorm, out, T, HK, kb.shape[3], q.stride(0), q.stride(1), q.stride(2),
         kb.stride(0), kb.stride(1), kb.stride(2), kb.stride(3), out.stride(0), out.stride(1), out.stride(2), scale2),
        dict(S=block_size, N=block_count, G=G, GP=GP, BQ=BQ, D=D, BD=BD, KB=KB, BN1=launch.block_tile,
             NSPLIT=nsplit, IEEE=ieee, UNIFORM=block_size % BQ == 0, **docs,
             num_warps=launch.num_warps, num_stages=launch.num_stages, enable_fp_fusion=False),
    )
    return out


_CAP_SPILLS: dict[tuple, bool] = {}  # (launch shape, cap) -> whether the register cap made the compiler spill


def _launch_capped(kernel, grid, maxnreg, args, meta):
    """Launch with the register cap unless this launch shape spilled under it before.

    The cap buys a fourth resident program per SM at the benchmark shape (128 registers, no spills);
    wider shapes (d=128, n>16, small groups) would spill under it, so the first launch of a shape
    checks the compiled kernel and later launches of that shape run uncapped if it spilled."""
    key = (kernel.fn.__name__, maxnreg, *sorted((k, v) for k, v in meta.items() if not isinstance(v, torch.Tensor)))
    if interpreting() or maxnreg is None or _CAP_SPILLS.get(key, False):
        return kernel[grid](*args, **meta)
    compiled = kernel[grid](*args, **meta, maxnreg=maxnreg)
    if key not in _CAP_SPILLS:
        _CAP_SPILLS[key] = getattr(compiled, "n_spills", 0) > 0
    return compiled


def _launch_shape(G: int, block_count: int, D: int, rows: int):
    """Top-K buffer width KB, queries per program BQ, padded group GP and padded head dim BD."""
    KB = max(16, next_pow2(block_count))  # > N-1: one spare slot takes the current block
    GP0 = next_pow2(G)
    # Rows per program ~rows for the tensor cores; fewer queries when the top-K buffer is wide so the
    # [BQ, KB] int64 buffer stays in registers.
    BQ = max(1, min(rows // GP0, 2048 // KB))
    GP = max(GP0, 16 // BQ)  # at least 16 rows for tl.dot: pad heads when the group is tiny
    BD = max(16, next_pow2(D))
    return KB, BQ, GP, BD
