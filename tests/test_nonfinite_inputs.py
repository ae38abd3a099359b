"""NaN and inf inputs propagate through the sparse ops as through dense attention, in every backend.

A non-finite value must never turn into a silent exact zero: a query whose own q is NaN, or that
attends a NaN/inf key or value, outputs NaN; queries that do not see it stay finite. The selection
stays well-formed (own block once, ascending, full budget) and equal across backends.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ssa.ops import api, reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch"] + (["triton"] if api._triton_module() is not None else [])
B, T, HQ, HK, D, S = 1, 22, 4, 2, 16, 4  # 6 blocks, the last one partial
NB = -(-T // S)


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, h, D, generator=g).to(DEVICE) for h in (HQ, HK, HK)]


def _finite_rows(o):
    return o.isfinite().all(-1)  # [B, T, HQ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [2, NB])
def test_nan_in_q_gives_nan_in_that_row_only(backend, n):
    q, k, v = _qkv()
    q[0, 13, 1, 5] = float("nan")
    o, lse = api.block_sparse_attention(q, k, v, S, n, backend=backend, return_lse=True)
    want = torch.ones(B, T, HQ, dtype=torch.bool, device=DEVICE)
    want[0, 13, 1] = False  # as dense attention: only the row of the NaN query
    assert torch.equal(_finite_rows(o), want)
    assert torch.equal(lse.isfinite(), want)
    assert torch.equal(_finite_rows(api.full_attention(q, k, v)), want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_key_with_every_block_selected_matches_dense(backend, value):
    # With a budget covering every block the sparse op is dense causal attention, so the pattern of
    # non-finite outputs must be dense attention's: +inf logits give NaN, -inf logits weight 0, and
    # queries before the key never see it. The dense expectation is computed on the CPU: on an H200
    # SDPA's fused kernels also turn earlier (causally masked) query rows into NaN.
    q, k, v = _qkv(1)
    k[0, 9, 0] = value
    o = api.block_sparse_attention(q, k, v, S, NB, backend=backend)
    dense = api.full_attention(*(x.cpu() for x in (q, k, v))).to(o.device)
    assert not _finite_rows(dense).all()
    assert torch.equal(_finite_rows(o), _finite_rows(dense))
    ok = _finite_rows(dense)
    torch.testing.assert_close(o[ok], dense[ok], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["k", "v"])
def test_nan_key_or_value_reaches_exactly_the_queries_that_attend_it(backend, where):
    q, k, v = _qkv(2)
    pos = 9  # block 2
    (k if where == "k" else v)[0, pos, 1] = float("nan")
    n = 2
    idx = api.select_blocks(q, k, S, n, backend=backend)
    o = api.block_sparse_attention(q, k, v, S, n, block_indices=idx, backend=backend)
    t = torch.arange(T, device=DEVICE)
    sees = ((idx[0, :, 1] == pos // S).any(-1) & (t >= pos))  # [T]: KV head 1 attends the position
    want = torch.ones(B, T, HQ, dtype=torch.bool, device=DEVICE)
    want[0, :, 2:] = ~sees[:, None]  # query heads 2, 3 form the group of KV head 1
    assert sees.any() and not sees.all()
    assert torch.equal(_finite_rows(o), want)


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton")
@pytest.mark.parametrize("launch", [{}, dict(rows=16, block_tile=16)])
@pytest.mark.parametrize("where", ["q", "k"])
def test_selection_with_nonfinite_inputs_matches_reference(launch, where):
    # NaN scores rank first (ties to the lower block) in both backends; rows whose candidates are all
    # finite keep their exact selection even though the key bound of the whole head is not finite.
    # 16-row programs are block-uniform here (unmasked tiles); the default ones are not.
    from ssa.ops.triton import _select

    settings = _select.SelectLaunch(**launch)
    q, k, _ = _qkv(3)
    if where == "q":
        q[0, 17, 0, 2] = float("nan")
        q[0, 10, 3, 2] = float("inf")
    else:
        k[0, 14, 0, 2] = float("nan")  # block 3: later queries of KV head 0 have NaN scores
        k[0, 5, 1, 0] = float("inf")
    for n in (1, 2, 3, NB):
        if launch:
            got = _select.select_blocks(q, k, S, n, D ** -0.5, launch=settings)
        else:  # the public op
            got = api.select_blocks(q, k, S, n, backend="triton")
        want = reference.select_blocks(q, k, S, n, D ** -0.5)
        assert torch.equal(got, want), n
        own = (torch.arange(T, device=DEVICE) // S)[None, :, None, None]
        assert ((got == own).sum(-1) == 1).all()
