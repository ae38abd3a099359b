"""The reference ops against brute-force, loop-by-loop implementations of docs/design.md §1.1."""

import math

import pytest
import torch

from ssa.ops import (
    block_sparse_attention,
    compressed_attention,
    full_attention,
    select_blocks,
    sliding_window_attention,
)


def brute_select(q, k, s, n, scale):
    """One query, one KV head at a time, in float64, straight from the definition."""
    B, T, HQ, D = q.shape
    HK = k.shape[2]
    G = HQ // HK
    out = torch.full((B, T, HK, n), -1, dtype=torch.int32)
    for b in range(B):
        for h in range(HK):
            kbar = [k[b, c * s:(c + 1) * s, h].double().mean(0) for c in range(math.ceil(T / s))]
            for t in range(T):
                ct = t // s
                score = [0.0] * ct
                for g in range(G):
                    logits = [float(q[b, t, h * G + g].double() @ kbar[c]) * scale for c in range(ct)]
                    if logits:
                        m = max(logits)
                        z = sum(math.exp(x - m) for x in logits)
                        for c in range(ct):
                            score[c] += math.exp(logits[c] - m) / z
                ranked = sorted(range(ct), key=lambda c: (-score[c], c))[: n - 1]
                chosen = sorted(ranked + [ct])
                out[b, t, h, : len(chosen)] = torch.tensor(chosen, dtype=torch.int32)
    return out


def dense_masked_attention(q, k, v, allowed, scale):
    """Softmax attention with an explicit [B, T, HQ, T] boolean mask (tiny inputs only)."""
    G = q.shape[2] // k.shape[2]
    kk = k.double().repeat_interleave(G, 2)
    vv = v.double().repeat_interleave(G, 2)
    logits = torch.einsum("bthd,bshd->bths", q.double(), kk) * scale
    logits = logits.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(logits, -1).nan_to_num(0.0)
    return torch.einsum("bths,bshd->bthd", probs, vv)


def selection_mask(idx, T, s, G):
    """[B, T, HK, n] block ids -> [B, T, HQ, T] visible keys (selected blocks, causal)."""
    B, _, HK, n = idx.shape
    pos = torch.arange(T)
    block_of_key = pos // s
    allowed = torch.zeros(B, T, HK, T, dtype=torch.bool)
    for slot in range(n):
        ids = idx[..., slot].long()
        allowed |= (block_of_key[None, None, None, :] == ids[..., None]) & (ids[..., None] >= 0)
    causal = pos[:, None] >= pos[None, :]  # [T, T]
    allowed &= causal[None, :, None, :]
    return allowed.repeat_interleave(G, 2)


SHAPES = [
    # (B, T, HQ, HK, D, s, n)
    (1, 5, 2, 2, 8, 16, 4),  # T < s: only the current block
    (2, 37, 4, 2, 8, 4, 3),  # T not a multiple of s, GQA
    (1, 64, 3, 1, 8, 4, 6),  # odd group size (G=3)
    (1, 50, 2, 1, 4, 2, 30),  # n > s, n > number of blocks
    (2, 33, 8, 2, 16, 8, 2),  # G=4
    (1, 40, 1, 1, 8, 1, 5),  # block size 1
]


@pytest.mark.parametrize("shape", SHAPES)
def test_select_blocks_matches_brute_force(shape):
    B, T, HQ, HK, D, s, n = shape
    torch.manual_seed(hash(shape) % 1000)
    q = torch.randn(B, T, HQ, D, dtype=torch.float64)
    k = torch.randn(B, T, HK, D, dtype=torch.float64)
    got = select_blocks(q, k, block_size=s, block_count=n)
    assert got.dtype == torch.int32 and got.shape == (B, T, HK, n)
    assert torch.equal(got, brute_select(q, k, s, n, D ** -0.5))


def test_selection_ties_go_to_lower_block():
    # Identical block means make every candidate score the same.
    q = torch.randn(1, 40, 2, 8)
    k = torch.ones(1, 40, 1, 8)
    idx = select_blocks(q, k, block_size=4, block_count=3)
    assert idx[0, 39, 0].tolist() == [0, 1, 9]
    assert idx[0, 9, 0].tolist() == [0, 1, 2]


def test_selection_format_sorted_with_trailing_padding():
    q, k = torch.randn(2, 90, 4, 8), torch.randn(2, 90, 2, 8)
    idx = select_blocks(q, k, block_size=8, block_count=5)
    for row in idx.reshape(-1, 5).tolist():
        valid = [c for c in row if c >= 0]
        assert row == valid + [-1] * (5 - len(valid))
        assert valid == sorted(valid) and len(set(valid)) == len(valid)
    current = torch.arange(90) // 8
    assert (idx == current[None, :, None, None]).any(-1).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_block_sparse_attention_matches_dense_masked(shape):
    B, T, HQ, HK, D, s, n = shape
    torch.manual_seed(1)
    q, k, v = (torch.randn(B, T, h, D, dtype=torch.float64) for h in (HQ, HK, HK))
    idx = select_blocks(q, k, s, n)
    out, lse = block_sparse_attention(q, k, v, s, n, block_indices=idx, return_lse=True)
    allowed = selection_mask(idx, T, s, HQ // HK)
    ref = dense_masked_attention(q, k, v, allowed, D ** -0.5)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    G = HQ // HK
    logits = torch.einsum("bthd,bshd->bths", q, k.repeat_interleave(G, 2)) * D ** -0.5
    ref_lse = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), -1)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("T,s", [(37, 4), (64, 16), (7, 16)])
def test_sparse_equals_full_when_budget_covers_every_block(T, s):
    q, k, v = torch.randn(2, T, 4, 8), torch.randn(2, T, 2, 8), torch.randn(2, T, 2, 8)
    n = math.ceil(T / s)
    sparse = block_sparse_attention(q, k, v, block_size=s, block_count=n)
    torch.testing.assert_close(sparse, full_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_full_attention_matches_dense_causal():
    q, k, v = torch.randn(2, 29, 6, 8), torch.randn(2, 29, 2, 8), torch.randn(2, 29, 2, 8)
    causal = torch.ones(29, 29).tril().bool()[None, :, None, :].expand(2, 29, 6, 29)
    torch.testing.assert_close(full_attention(q, k, v).double(), dense_masked_attention(q, k, v, causal, 8 ** -0.5), rtol=1e-5, atol=1e-5)


def test_unselected_blocks_get_exactly_zero_gradient():
    # Every block is some query's current block, so look at one query's output: exactly the blocks
    # it selected get gradient in k and v, all others get exact zeros.
    torch.manual_seed(3)
    T, s, n = 64, 8, 3
    q = torch.randn(1, T, 2, 8)
    k = torch.randn(1, T, 1, 8, requires_grad=True)
    v = torch.randn(1, T, 1, 8, requires_grad=True)
    idx = select_blocks(q, k.detach(), s, n)
    for t in (T - 1, 40, 20):
        k.grad = v.grad = None
        block_sparse_attention(q, k, v, s, n, block_indices=idx)[0, t].sum().backward()
        chosen = [c for c in idx[0, t, 0].tolist() if c >= 0]
        for grad in (k.grad, v.grad):
            per_block = grad[0, :, 0].reshape(T // s, -1)
            touched = (per_block != 0).any(1).nonzero().flatten().tolist()
            assert touched == chosen
        assert len(chosen) == n


def test_compressed_attention_matches_brute_force():
    torch.manual_seed(4)
    B, T, HQ, HK, D, s = 2, 30, 4, 2, 8, 4
    q, k, v = (torch.randn(B, T, h, D, dtype=torch.float64) for h in (HQ, HK, HK))
    out = compressed_attention(q, k, v, block_size=s)
    G = HQ // HK
    ref = torch.zeros_like(out)
    for b in range(B):
        for t in range(T):
            ct = t // s
            for h in range(HQ):
                if ct == 0:
                    continue
                kb = torch.stack([k[b, c * s:(c + 1) * s, h // G].mean(0) for c in range(ct)])
                vb = torch.stack([v[b, c * s:(c + 1) * s, h // G].mean(0) for c in range(ct)])
                p = torch.softmax(kb @ q[b, t, h] * D ** -0.5, 0)
                ref[b, t, h] = p @ vb
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("window", [1, 5, 300])
def test_sliding_window_matches_dense(window):
    T = 300  # more than one query chunk
    q, k, v = (torch.randn(1, T, h, 8, dtype=torch.float64) for h in (4, 2, 2))
    pos = torch.arange(T)
    band = (pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < window)
    allowed = band[None, :, None, :].expand(1, T, 4, T)
    torch.testing.assert_close(sliding_window_attention(q, k, v, window=window), dense_masked_attention(q, k, v, allowed, 8 ** -0.5))


def test_gradients_are_finite_for_every_op():
    q, k, v = (torch.randn(1, 20, h, 8, requires_grad=True) for h in (2, 1, 1))
    total = (
        block_sparse_attention(q, k, v, 4, 2).sum()
        + compressed_attention(q, k, v, 4).sum()
        + sliding_window_attention(q, k, v, 3).sum()
        + full_attention(q, k, v).sum()
    )
    total.backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
