"""Attention statistics of docs/design.md §1.5, computed in query chunks.

`attention_statistics` is called by every attention layer when the model runs with
`output_attention_stats=True`. It returns *sums* (per query head, or per KV head for the
selection histogram) together with the number of queries they cover, so results of many batches,
documents and windows can be added with `merge_statistics` and turned into means with
`summarize_statistics`.

For query t and query head h, with p = the causal full-attention distribution and S(t) = the keys
of the blocks in the layer's own selection (block_indices):

- sparsity  (Def. 1)   m(t) = sum_{j in S(t)} p_j            (higher = more concentrated)
- dropped mass         1 - m(t)
- entropy (bits)       -sum_j p_j log2 p_j
- KL                   between full attention p and sparse attention p_S = p restricted to S(t) and
                       renormalised (exactly the block-sparse attention distribution). The paper names
                       KL(full || sparse), which is infinite whenever any mass is dropped (p_S is zero
                       where p is not); reported (`kl`) is the finite direction (docs/design.md §1.5)
                       KL(p_S || p) = sum_{j in S} (p_j/m) ln(1/m) = -ln m(t)   (nats),
                       0 exactly when nothing is dropped.
- sink mass            p mass on the first block, and on token 0
- distance histogram   for every selected block c (per KV head), the distance c_t - c in blocks,
                       binned in powers of two (bin 0: d=0, bin i>=1: 2^(i-1) <= d < 2^i)
- distance mass        full-attention mass by the same block-distance bins (all blocks, per query head)

Memory: one chunk holds [B, C, HQ, T] floats; C is chosen so that stays near `max_elements`.
"""

from __future__ import annotations

import math

import torch

# Number of power-of-two distance bins: bin 0 is distance 0, bin 20 holds distances >= 2^19.
NUM_DISTANCE_BINS = 21
# Default number of logits held per chunk (x ~4 live temporaries of float32).
MAX_ELEMENTS = 1 << 24

SUM_KEYS = (
    "sparsity_sum",
    "dropped_sum",
    "entropy_sum",
    "kl_sum",
    "sink_block_sum",
    "sink_token_sum",
    "restricted_sparsity_sum",
)


def distance_bin_edges(num_bins: int = NUM_DISTANCE_BINS) -> list[int]:
    """Lower edge (in blocks) of each distance bin: [0, 1, 2, 4, 8, ...]."""
    return [0] + [2 ** (i - 1) for i in range(1, num_bins)]


def distance_bins(d: torch.Tensor, num_bins: int = NUM_DISTANCE_BINS) -> torch.Tensor:
    """Map non-negative integer block distances to bin ids (0 -> 0, [2^(i-1), 2^i) -> i)."""
    d = d.long().clamp(min=0)
    bins = torch.where(d > 0, torch.floor(torch.log2(d.clamp(min=1).double())).long() + 1, torch.zeros_like(d))
    return bins.clamp(max=num_bins - 1)


def attention_statistics(q, k, block_indices, block_size: int, scale: float | None = None,
                         max_elements: int = MAX_ELEMENTS) -> dict:
    """Statistics sums of one layer's attention (see module docstring).

    q [B,T,HQ,D], k [B,T,HK,D] (after RoPE), block_indices int [B,T,HK,n] (sorted, -1 padded).
    Returns a dict of float64 CPU tensors: the SUM_KEYS as [HQ] sums over the B*T queries,
    `queries` (count), `restricted_queries` ([HK]: query positions whose causal history has more
    blocks than the selection could hold, i.e. where dropping is possible; the restricted sparsity
    sum covers exactly those), `selection_hist` [HK, bins], `distance_mass` [HQ, bins].
    """
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [batch, seq, heads, dim], got shapes {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, HQ, D = q.shape
    HK = k.shape[2]
    if k.shape[0] != B or k.shape[1] != T or k.shape[3] != D or HQ % HK:
        raise ValueError(f"k shape {tuple(k.shape)} does not match q shape {tuple(q.shape)} (GQA needs HQ % HK == 0)")
    if block_indices.dim() != 4 or tuple(block_indices.shape[:3]) != (B, T, HK):
        raise ValueError(f"block_indices must have shape [batch={B}, seq={T}, kv_heads={HK}, n], got {tuple(block_indices.shape)}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    G = HQ // HK
    s = block_size
    n = block_indices.shape[-1]
    nb = math.ceil(T / s)
    scale = D ** -0.5 if scale is None else float(scale)
    nbins = NUM_DISTANCE_BINS
    dev = q.device
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32

    sums = {key: torch.zeros(HQ, dtype=torch.float64, device=dev) for key in SUM_KEYS}
    sel_hist = torch.zeros(HK, nbins, dtype=torch.float64, device=dev)
    dist_mass = torch.zeros(HQ, nbins, dtype=torch.float64, device=dev)
    restricted = torch.zeros(HK, dtype=torch.float64, device=dev)

    with torch.no_grad():
        kk = k.to(dtype).permute(0, 2, 3, 1)[:, :, None]  # [B, HK, 1, D, T], shared by the G heads
        chunk = max(1, min(T, max_elements // max(1, B * HQ * T)))
        for t0 in range(0, T, chunk):
            t1 = min(t0 + chunk, T)
            C = t1 - t0
            L = nb * s if t1 == T else math.ceil(t1 / s) * s  # keys up to the end of the chunk's last block
            Lk = min(L, T)
            qc = q[:, t0:t1].to(dtype).transpose(1, 2).reshape(B, HK, G, C, D)
            logits = torch.matmul(qc, kk[..., :Lk]).view(B, HQ, C, Lk) * scale
            tq = torch.arange(t0, t1, device=dev)
            causal = torch.arange(Lk, device=dev)[None, :] <= tq[:, None]  # [C, Lk]
            logits = logits.masked_fill(~causal, float("-inf"))
            logp = torch.log_softmax(logits, dim=-1)
            del logits
            p = logp.exp()
            ent = -(p * logp.nan_to_num(neginf=0.0)).sum(-1) / math.log(2.0)  # [B, HQ, C]
            if L > Lk:
                logp = torch.nn.functional.pad(logp, (0, L - Lk), value=float("-inf"))
                p = torch.nn.functional.pad(p, (0, L - Lk))
            nbc = L // s
            block_logmass = torch.logsumexp(logp.view(B, HQ, C, nbc, s), dim=-1)  # [B, HQ, C, nbc]
            block_mass = p.view(B, HQ, C, nbc, s).sum(-1)
            sink_token = p[..., 0]
            del logp, p

            # Selected blocks, expanded from KV heads to their query heads.
            idx = block_indices[:, t0:t1].long()  # [B, C, HK, n]
            valid = (idx >= 0) & (idx < nbc)
            idx_c = idx.clamp(0, nbc - 1)
            idx_h = idx_c.permute(0, 2, 1, 3).repeat_interleave(G, dim=1)  # [B, HQ, C, n]
            valid_h = valid.permute(0, 2, 1, 3).repeat_interleave(G, dim=1)
            sel_log = torch.gather(block_logmass, -1, idx_h).masked_fill(~valid_h, float("-inf"))
            log_m = torch.logsumexp(sel_log, dim=-1).clamp(max=0.0)  # ln of selected mass, [B, HQ, C]
            m = log_m.exp()

            cur = tq // s  # current block of each query
            # Dropping is possible where the query sees more blocks than the selection can hold.
            can_drop = (cur + 1) > n  # [C]

            sums["sparsity_sum"] += m.sum((0, 2)).double()
            sums["dropped_sum"] += (1.0 - m).sum((0, 2)).double()
            sums["entropy_sum"] += ent.sum((0, 2)).double()
            sums["kl_sum"] += (-log_m).sum((0, 2)).double()
            sums["sink_block_sum"] += block_mass[..., 0].sum((0, 2)).double()
            sums["sink_token_sum"] += sink_token.sum((0, 2)).double()
            sums["restricted_sparsity_sum"] += (m * can_drop[None, None, :]).sum((0, 2)).double()
            restricted += float(can_drop.sum()) * B

            # Histogram of selected-block distances, per KV head.
            dist = (cur[None, :, None, None] - idx_c)  # [B, C, HK, n]
            bins = distance_bins(dist, nbins)
            flat = bins + nbins * torch.arange(HK, device=dev)[None, None, :, None]
            sel_hist += torch.bincount(flat[valid], minlength=HK * nbins).view(HK, nbins).double()

            # Full-attention mass by block distance, per query head.
            bdist = cur[:, None] - torch.arange(nbc, device=dev)[None, :]  # [C, nbc]; negative = future
            bbins = distance_bins(bdist, nbins)
            bbins = torch.where(bdist >= 0, bbins, torch.full_like(bbins, nbins))  # future -> dropped bin
            acc = torch.zeros(B, HQ, C, nbins + 1, dtype=block_mass.dtype, device=dev)
            acc.scatter_add_(-1, bbins.expand(B, HQ, C, nbc), block_mass)
            dist_mass += acc[..., :nbins].sum((0, 2)).double()
            del block_logmass, block_mass
    out = {key: v.cpu() for key, v in sums.items()}
    out["queries"] = torch.tensor(float(B * T), dtype=torch.float64)
    out["restricted_queries"] = restricted.cpu()
    out["selection_hist"] = sel_hist.cpu()
    out["distance_mass"] = dist_mass.cpu()
    return out


def merge_statistics(a: dict | None, b: dict) -> dict:
    """Add two statistics dicts (of one layer) key by key; `a=None` returns a copy of `b`."""
    if a is None:
        return {key: v.clone() for key, v in b.items()}
    if set(a) != set(b):
        raise ValueError(f"cannot merge statistics with different keys: {sorted(a)} vs {sorted(b)}")
    return {key: a[key] + b[key] for key in a}


def merge_layer_lists(a: list | None, b: list) -> list:
    """Merge two per-layer lists of statistics dicts."""
    if a is None:
        return [merge_statistics(None, x) for x in b]
    if len(a) != len(b):
        raise ValueError(f"cannot merge statistics of {len(a)} and {len(b)} layers")
    return [merge_statistics(x, y) for x, y in zip(a, b)]


def _mean(x: torch.Tensor, count) -> list:
    c = count if isinstance(count, torch.Tensor) else torch.tensor(float(count))
    c = c.clamp(min=1.0)
    return (x / c).tolist()


def summarize_layer(stats: dict) -> dict:
    """Means of one layer's sums: per head (lists) and the head mean (floats)."""
    q = stats["queries"]
    G = stats["sparsity_sum"].shape[0] // stats["restricted_queries"].shape[0]
    restricted_q = stats["restricted_queries"].repeat_interleave(G)
    out = {"queries": float(q)}
    names = {
        "sparsity_sum": "sparsity",
        "dropped_sum": "dropped_mass",
        "entropy_sum": "entropy_bits",
        "kl_sum": "kl",
        "sink_block_sum": "sink_block_mass",
        "sink_token_sum": "sink_token_mass",
    }
    for key, name in names.items():
        per_head = _mean(stats[key], q)
        out[name] = sum(per_head) / len(per_head)
        out[name + "_per_head"] = per_head
    rq = restricted_q.clamp(min=1.0)
    per_head = (stats["restricted_sparsity_sum"] / rq).tolist()
    has = bool((restricted_q > 0).any())
    out["restricted_queries"] = float(stats["restricted_queries"].sum())
    out["restricted_sparsity"] = (sum(per_head) / len(per_head)) if has else None
    out["restricted_sparsity_per_head"] = per_head if has else None
    hist = stats["selection_hist"].sum(0)
    out["selection_distance_hist"] = (hist / hist.sum().clamp(min=1.0)).tolist()
    dm = stats["distance_mass"].sum(0)
    out["distance_mass"] = (dm / dm.sum().clamp(min=1e-30)).tolist()
    return out


def summarize_statistics(layers: list) -> dict:
    """Per-layer summaries plus overall means over layers (KL: the final layer, as docs/design.md §1.5)."""
    per_layer = [summarize_layer(s) for s in layers]
    overall = {}
    for name in ("sparsity", "dropped_mass", "entropy_bits", "sink_block_mass", "sink_token_mass"):
        overall[name] = sum(x[name] for x in per_layer) / len(per_layer)
    overall["kl_final_layer"] = per_layer[-1]["kl"]
    overall["kl_mean"] = sum(x["kl"] for x in per_layer) / len(per_layer)
    rs = [x["restricted_sparsity"] for x in per_layer if x["restricted_sparsity"] is not None]
    overall["restricted_sparsity"] = sum(rs) / len(rs) if rs else None
    return {"overall": overall, "layers": per_layer, "distance_bin_edges": distance_bin_edges()}
