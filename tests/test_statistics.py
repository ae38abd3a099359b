"""attention_statistics against a brute-force dense computation of docs/design.md §1.5."""

import math

import pytest
import torch

from ssa.ops import block_sparse_attention, select_blocks
from ssa.ops.statistics import (
    NUM_DISTANCE_BINS,
    attention_statistics,
    distance_bins,
    merge_layer_lists,
    summarize_statistics,
)


def brute_force(q, k, idx, s, scale):
    """Per (b, t, h) loops over a dense T x T causal softmax in float64."""
    B, T, HQ, D = q.shape
    HK = k.shape[2]
    G = HQ // HK
    res = {key: torch.zeros(HQ, dtype=torch.float64) for key in ("spars", "ent", "kl", "sinkb", "sinkt", "rspars")}
    hist = torch.zeros(HK, NUM_DISTANCE_BINS, dtype=torch.float64)
    rcount = torch.zeros(HK, dtype=torch.float64)
    n = idx.shape[-1]
    for b in range(B):
        for h in range(HQ):
            kh = h // G
            logits = (q[b, :, h].double() @ k[b, :, kh].double().T) * scale
            mask = torch.ones(T, T, dtype=torch.bool).tril()
            p = torch.softmax(logits.masked_fill(~mask, float("-inf")), -1)
            for t in range(T):
                row = p[t, : t + 1]
                sel = [int(c) for c in idx[b, t, kh] if c >= 0]
                keys = [j for j in range(t + 1) if j // s in sel]
                m = float(row[keys].sum())
                res["spars"][h] += m
                nz = row[row > 0]
                res["ent"][h] += float(-(nz * nz.log2()).sum())
                # KL(sparse || full) from its definition, sparse = the renormalised restriction
                # (the other direction is infinite whenever mass is dropped).
                sparse = torch.zeros_like(row)
                sparse[keys] = row[keys] / m
                kl = sum(float(sparse[j] * math.log(sparse[j] / row[j])) for j in range(t + 1) if sparse[j] > 0)
                res["kl"][h] += kl
                res["sinkb"][h] += float(row[: min(s, t + 1)].sum())
                res["sinkt"][h] += float(row[0])
                if t // s + 1 > n:
                    res["rspars"][h] += m
                    if h % G == 0:
                        rcount[kh] += 1
                if h % G == 0:
                    for c in sel:
                        d = t // s - c
                        binid = 0 if d == 0 else min(int(math.floor(math.log2(d))) + 1, NUM_DISTANCE_BINS - 1)
                        hist[kh, binid] += 1
    return res, hist, rcount


@pytest.mark.parametrize(
    "B,T,HQ,HK,D,s,n",
    [(1, 37, 2, 1, 8, 4, 3), (2, 50, 4, 2, 8, 8, 2), (1, 20, 2, 2, 4, 4, 16), (1, 9, 1, 1, 4, 16, 4)],
)
def test_against_brute_force(B, T, HQ, HK, D, s, n):
    torch.manual_seed(0)
    q = torch.randn(B, T, HQ, D) * 2
    k = torch.randn(B, T, HK, D) * 2
    scale = D ** -0.5
    idx = select_blocks(q, k, block_size=s, block_count=n)
    # Tiny max_elements forces many query chunks, including chunks ending mid-block.
    stats = attention_statistics(q, k, idx, s, scale, max_elements=B * HQ * T * 3)
    ref, hist, rcount = brute_force(q, k, idx, s, scale)
    assert float(stats["queries"]) == B * T
    torch.testing.assert_close(stats["sparsity_sum"], ref["spars"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["dropped_sum"], B * T - ref["spars"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats["entropy_sum"], ref["ent"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats["kl_sum"], ref["kl"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stats["sink_block_sum"], ref["sinkb"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["sink_token_sum"], ref["sinkt"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["restricted_sparsity_sum"], ref["rspars"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["restricted_queries"], rcount)
    torch.testing.assert_close(stats["selection_hist"], hist)
    # Distance mass is a distribution over bins for every query: it sums to the query count.
    torch.testing.assert_close(stats["distance_mass"].sum(-1), torch.full((HQ,), float(B * T), dtype=torch.float64))


def test_kl_equals_log_ratio_of_sparse_output_lse():
    """KL(sparse||full) = -ln m = lse_full - lse_sparse per query: cross-check with the sparse kernel's lse."""
    torch.manual_seed(1)
    B, T, H, D, s, n = 1, 64, 2, 8, 8, 3
    q, k, v = (torch.randn(B, T, H, D, dtype=torch.float64) for _ in range(3))
    idx = select_blocks(q, k, block_size=s, block_count=n)
    _, lse_sparse = block_sparse_attention(q, k, v, block_size=s, block_indices=idx, return_lse=True)
    logits = torch.einsum("bthd,bshd->bhts", q, k) * D ** -0.5
    logits = logits.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    lse_full = torch.logsumexp(logits, -1).transpose(1, 2)  # [B, T, H]
    expected = (lse_full - lse_sparse).sum((0, 1))
    stats = attention_statistics(q, k, idx, s, D ** -0.5)
    torch.testing.assert_close(stats["kl_sum"], expected, rtol=1e-8, atol=1e-8)


def test_full_budget_gives_sparsity_one_and_zero_kl():
    torch.manual_seed(2)
    q, k = torch.randn(2, 40, 4, 8), torch.randn(2, 40, 2, 8)
    idx = select_blocks(q, k, block_size=4, block_count=10)  # 10 blocks cover all of T=40
    stats = attention_statistics(q, k, idx, 4)
    torch.testing.assert_close(stats["sparsity_sum"], torch.full((4,), 80.0, dtype=torch.float64))
    assert float(stats["kl_sum"].abs().max()) < 1e-4
    assert float(stats["restricted_queries"].sum()) == 0


def test_uniform_attention_known_values():
    """q = 0 gives uniform causal attention: entropy log2(t+1), sink token 1/(t+1)."""
    T, s = 32, 4
    q = torch.zeros(1, T, 1, 4, dtype=torch.float64)
    k = torch.randn(1, T, 1, 4, dtype=torch.float64)
    idx = select_blocks(q, k, block_size=s, block_count=2)
    stats = attention_statistics(q, k, idx, s)
    t = torch.arange(T, dtype=torch.float64)
    torch.testing.assert_close(stats["entropy_sum"], torch.log2(t + 1).sum().reshape(1))
    torch.testing.assert_close(stats["sink_token_sum"], (1 / (t + 1)).sum().reshape(1))
    # Ties go to the lowest blocks, so block 0 is always selected; mass = visible keys in selection / (t+1).
    expected = 0.0
    for tt in range(T):
        sel = [int(c) for c in idx[0, tt, 0] if c >= 0]
        expected += sum(1 for j in range(tt + 1) if j // s in sel) / (tt + 1)
    assert float(stats["sparsity_sum"]) == pytest.approx(expected)


def test_merge_and_summarize():
    torch.manual_seed(3)
    q, k = torch.randn(1, 48, 2, 8), torch.randn(1, 48, 1, 8)
    idx = select_blocks(q, k, block_size=4, block_count=3)
    whole = attention_statistics(torch.cat([q, q]), torch.cat([k, k]), torch.cat([idx, idx]), 4)
    one = attention_statistics(q, k, idx, 4)
    merged = merge_layer_lists(merge_layer_lists(None, [one]), [one])[0]
    for key in whole:
        torch.testing.assert_close(merged[key], whole[key])
    summary = summarize_statistics([one, merged])
    layer = summary["layers"][0]
    assert layer["sparsity"] == pytest.approx(float(one["sparsity_sum"].mean() / 48))
    assert layer["sparsity"] + layer["dropped_mass"] == pytest.approx(1.0)
    assert sum(layer["selection_distance_hist"]) == pytest.approx(1.0)
    assert summary["overall"]["kl_final_layer"] == pytest.approx(summary["layers"][1]["kl"])


def test_distance_bins_and_bad_input():
    d = torch.tensor([0, 1, 2, 3, 4, 7, 8, 1 << 30])
    assert distance_bins(d).tolist() == [0, 1, 2, 2, 3, 3, 4, NUM_DISTANCE_BINS - 1]
    q, k = torch.randn(1, 8, 2, 4), torch.randn(1, 8, 1, 4)
    with pytest.raises(ValueError, match="block_indices"):
        attention_statistics(q, k, torch.zeros(1, 8, 2, 2, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="block_size"):
        attention_statistics(q, k, torch.zeros(1, 8, 1, 2, dtype=torch.int32), 0)
