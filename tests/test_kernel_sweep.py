"""Randomized sweep of the Triton selection and sparse attention against the reference.

Every budget from 1 to past the number of blocks, GQA groups 1 to 32, odd lengths, odd head dims and
the three kernel dtypes. Each group size gets its own small shape (length, block size, head dim,
dtype rotate across the cases) so that the whole sweep stays a few seconds per group in Triton's
CPU interpreter; on a GPU the same tests run the compiled kernels.

Small budgets matter most: a row with few candidates concentrates the group's probability mass
(scores up to G) on few blocks, the regime where the selection once lost the current block.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from ssa.ops import reference  # noqa: E402

tri = pytest.importorskip("ssa.ops.triton")
from ssa.ops.triton import _select  # noqa: E402
from test_triton_kernels import DEVICE, _check_selection, _qkv  # noqa: E402

# G, T, s, D, dtype: odd lengths (a partial last block), odd head dims, block sizes not powers of two.
SWEEP = [
    (1, 21, 5, 17, torch.float32),
    (2, 15, 4, 24, torch.bfloat16),
    (3, 17, 4, 8, torch.float16),
    (4, 19, 6, 33, torch.float32),
    (8, 13, 3, 16, torch.bfloat16),
    (16, 15, 4, 17, torch.float32),
    (32, 11, 3, 12, torch.float16),
]
IDS = [f"G{c[0]}-T{c[1]}-s{c[2]}-d{c[3]}-{str(c[4])[6:]}" for c in SWEEP]


def _tolerance(G, dtype):
    # Scores lie in [0, G]: fp32 agrees to float rounding, half inputs to the ~2^-16 accuracy of the
    # split block keys. Anything larger is a wrong selection, not rounding.
    return G * (2e-6 if dtype == torch.float32 else 2e-5)


def _assert_well_formed(idx, s, n):
    """Each row: its own block exactly once, valid ids strictly ascending, -1 only at the end, and
    min(n, own + 1) valid slots (every budget is filled while candidates remain)."""
    B, T, HK, _ = idx.shape
    own = (torch.arange(T, device=idx.device) // s)[None, :, None, None]
    assert ((idx == own).sum(-1) == 1).all(), "own block missing or repeated"
    valid = idx >= 0
    assert (valid.sum(-1) == torch.clamp(own[..., 0] + 1, max=n)).all(), "wrong number of selected blocks"
    assert (valid[..., 1:] <= valid[..., :-1]).all(), "-1 slots must come last"
    both = valid[..., 1:] & valid[..., :-1]
    assert ((idx[..., 1:] > idx[..., :-1]) | ~both).all(), "ids must be strictly ascending"
    assert (idx < -(-T // s)).all()


def _sweep(G, T, s, D, dtype, budgets, seed, launch=None):
    HK = 1 if G >= 8 else 2  # two KV heads where the group is small, so head offsets are exercised
    q, k, _ = _qkv(1, T, G * HK, HK, D, dtype, seed=seed)
    for n in budgets:
        if launch is None:  # the public op
            got = tri.select_blocks(q, k, s, n, D ** -0.5)
        else:
            got = _select.select_blocks(q, k, s, n, D ** -0.5, launch=launch)
        _assert_well_formed(got, s, n)
        _check_selection(got, q, k, s, n, D ** -0.5, _tolerance(G, dtype))
        # Rounding may swap near-tied blocks, never more than a few rows.
        want = reference.select_blocks(q, k, s, n, D ** -0.5)
        assert int((got != want).any(-1).sum()) <= 2


@pytest.mark.parametrize("G,T,s,D,dtype", SWEEP, ids=IDS)
def test_selection_every_budget(G, T, s, D, dtype):
    nb = -(-T // s)
    _sweep(G, T, s, D, dtype, range(1, nb + 2), seed=G)


@pytest.mark.parametrize("G,T,s,D,dtype", SWEEP, ids=IDS)
def test_selection_small_programs_small_and_large_budgets(G, T, s, D, dtype):
    # 16-row programs and 16-block tiles: block-uniform programs (unmasked tiles) wherever the
    # program's query count divides s, which the default 128-row programs rarely are at these shapes.
    nb = -(-T // s)
    _sweep(G, T, s, D, dtype, (1, 2, nb + 1), seed=G + 100, launch=_select.SelectLaunch(rows=16, block_tile=16))


@pytest.mark.parametrize("G,T,s,D,dtype", SWEEP, ids=IDS)
def test_sparse_attention_every_group(G, T, s, D, dtype):
    # Forward output and lse over the reference's own selection, at a small and an over-full budget.
    HK = 1 if G >= 8 else 2
    q, k, v = _qkv(1, T, G * HK, HK, D, dtype, seed=G + 200)
    nb = -(-T // s)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    for n in (2, nb + 1):
        idx = reference.select_blocks(q, k, s, n, D ** -0.5)
        o, lse = tri.block_sparse_attention(q, k, v, idx, s, D ** -0.5, return_lse=True)
        o_ref, lse_ref = reference.block_sparse_attention(q, k, v, idx, s, D ** -0.5, return_lse=True)
        torch.testing.assert_close(o.float(), o_ref.float(), atol=tol, rtol=tol)
        torch.testing.assert_close(lse, lse_ref, atol=tol, rtol=tol)
    # With every block selected the sparse op is dense causal attention.
    dense = reference.full_attention(q.float(), k.float(), v.float(), D ** -0.5)
    torch.testing.assert_close(o.float(), dense, atol=tol, rtol=tol)
