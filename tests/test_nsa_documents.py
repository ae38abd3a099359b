"""NSA's compressed and sliding-window branches over packed documents in one launch.

The GPU paths (SDPA for the compressed branch, the block-sparse Triton kernels in the interpreter
for the window) take `cu_seqlens` directly; they must equal the reference run on each document on
its own, forward and backward, and must not fall back to a loop over documents.
"""

from __future__ import annotations

import pytest
import torch

from ssa import ops
from ssa.ops import reference

tri = pytest.importorskip("ssa.ops.triton")
from ssa.ops.triton import _nsa  # noqa: E402
from ssa.ops.triton import ops as tri_ops  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Block 4: shorter than a block (3), exactly a block (4), empty (0), blocks + remainder (11, 9), length 1,
# a multiple of blocks (8) after a remainder.
LENGTHS = [3, 4, 0, 11, 1, 1, 9, 8]
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def _cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=DEVICE)


def _leaves(T, HQ, HK, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, T, h, D, generator=g).to(DEVICE, dtype).requires_grad_() for h in (HQ, HK, HK)]


def _run(fn, leaves, D):
    out = fn(*leaves)
    weight = torch.linspace(-1, 1, D, device=DEVICE)  # a non-uniform upstream gradient
    (out.float() * weight).sum().backward()
    grads = [x.grad.clone() for x in leaves]
    for x in leaves:
        x.grad = None
    return out, grads


def _check_against_documents(packed, one_document, leaves, cu, dtype):
    """packed(q, k, v, cu) against one_document(q, k, v) on each document's slice, in float32."""
    D = leaves[0].shape[-1]
    got, got_grads = _run(lambda *x: packed(*x, cu), leaves, D)
    ref_leaves = [x.detach().float().requires_grad_() for x in leaves]
    want, want_grads = _run(lambda *x: reference.per_document(one_document, cu, *x), ref_leaves, D)
    torch.testing.assert_close(got.float(), want, **TOL[dtype])
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.float(), w, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("HQ,HK", [(2, 2), (4, 2), (4, 1)])
@pytest.mark.parametrize("tile", [8, 256])  # tiles that cut documents, and one tile for all
# The key-tile width read back from the device (None), or sized from a bound on the documents'
# lengths: the longest document itself (the tightest allowed) or a looser one.
@pytest.mark.parametrize("max_seqlen", [None, max(LENGTHS), 3 * max(LENGTHS)])
def test_compressed_documents_equal_documents_one_by_one(monkeypatch, dtype, HQ, HK, tile, max_seqlen):
    monkeypatch.setattr(_nsa, "QUERY_TILE", tile)
    s, D, scale = 4, 6, 0.4
    cu = _cu(LENGTHS)
    leaves = _leaves(int(cu[-1]), HQ, HK, D, dtype, seed=HQ + HK)
    _check_against_documents(lambda q, k, v, c: tri.compressed_attention(q, k, v, s, scale, c, max_seqlen),
                             lambda q, k, v: reference.compressed_attention(q, k, v, s, scale), leaves, cu, dtype)


def test_compressed_max_seqlen_below_the_longest_document_is_refused():
    q, k, v = _leaves(int(_cu(LENGTHS)[-1]), 2, 2, 6, torch.float32, seed=0)
    with pytest.raises(ValueError, match="max_seqlen=10 is below the longest document"):
        ops.compressed_attention(q, k, v, 4, cu_seqlens=_cu(LENGTHS), max_seqlen=10, backend="triton")


def test_compressed_first_block_of_every_document_is_exactly_zero():
    s, D = 4, 6
    cu = _cu(LENGTHS)
    T = int(cu[-1])
    q, k, v = _leaves(T, 4, 2, D, torch.float32, seed=7)
    out = tri.compressed_attention(q, k, v, s, 0.4, cu)
    out.sum().backward()
    doc = torch.searchsorted(cu.long(), torch.arange(T, device=DEVICE), right=True) - 1
    first_block = (torch.arange(T, device=DEVICE) - cu.long()[doc]) < s
    assert bool((out[0, first_block] == 0).all())
    assert bool((q.grad[0, first_block] == 0).all())
    assert bool((out[0, ~first_block] != 0).all())  # the others do see earlier blocks


def test_compressed_documents_one_long_document_equals_unpacked():
    s, D = 4, 6
    q, k, v = (x.detach() for x in _leaves(23, 4, 2, D, torch.float32, seed=3))
    packed = tri.compressed_attention(q, k, v, s, 0.4, _cu([23]))
    torch.testing.assert_close(packed, tri.compressed_attention(q, k, v, s, 0.4), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("window,HQ,HK,dtype", [
    (3, 2, 2, torch.float32),  # window shorter than most documents
    (6, 4, 2, torch.float32),  # window inside a document, across block edges
    (40, 4, 1, torch.float32),  # window longer than every document: stops at the document start
    (40, 2, 1, torch.bfloat16),
])
def test_sliding_window_documents_equal_documents_one_by_one(monkeypatch, window, HQ, HK, dtype):
    # Small key blocks, so that documents span several blocks and windows cross block edges.
    monkeypatch.setattr(tri_ops, "WINDOW_BLOCK", 4)
    D, scale = 8, 0.4
    cu = _cu(LENGTHS)
    leaves = _leaves(int(cu[-1]), HQ, HK, D, dtype, seed=window)
    _check_against_documents(lambda q, k, v, c: tri.sliding_window_attention(q, k, v, window, scale, c),
                             lambda q, k, v: reference.sliding_window_attention(q, k, v, window, scale),
                             leaves, cu, dtype)


@pytest.mark.parametrize("op,size", [("compressed_attention", 4), ("sliding_window_attention", 5)])
def test_api_runs_packed_nsa_branches_without_a_document_loop(monkeypatch, op, size):
    monkeypatch.setattr(tri_ops, "WINDOW_BLOCK", 4)
    cu = _cu([6, 1, 9])
    q, k, v = (x.detach() for x in _leaves(16, 4, 2, 8, torch.float32, seed=1))
    want = reference.per_document(lambda *x: getattr(reference, op)(*x, size, 8 ** -0.5), cu, q, k, v)

    def no_loop(*args, **kwargs):
        raise AssertionError("the Triton path must not loop over documents")

    monkeypatch.setattr(reference, "per_document", no_loop)
    got = getattr(ops, op)(q, k, v, size, backend="triton", cu_seqlens=cu)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
