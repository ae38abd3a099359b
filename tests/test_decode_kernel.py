"""The Triton sparse-decode kernel against the reference (TRITON_INTERPRET=1 on CPU, native on GPU)."""

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:  # must be set before triton is imported anywhere in this process
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from ssa.ops import decode  # noqa: E402
from ssa.ops.triton import _decode as decode_triton  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"


def make(B, L, HQ, HK, D, s, dtype=torch.float32, seed=0, tie=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HQ, D, generator=g)
    k = torch.randn(B, L, HK, D, generator=g)
    v = torch.randn(B, L, HK, D, generator=g)
    kbar = k.view(B, L // s, s, HK, D).mean(2)
    if tie:  # every block mean identical: all candidate scores tie exactly
        kbar = kbar[:, :1].expand_as(kbar).contiguous()
    return [x.to(DEVICE) for x in (q.to(dtype), k.to(dtype), v.to(dtype), kbar.float())]


def both(q, k, v, kbar, lengths, s, n):
    lengths = torch.tensor(lengths, device=DEVICE)
    ref, ridx = decode.sparse_decode(q, k, v, kbar, lengths, s, n, backend="torch", return_indices=True)
    out, idx = decode.sparse_decode(q, k, v, kbar, lengths, s, n, backend="triton", return_indices=True)
    return ref, ridx, out, idx


@pytest.mark.parametrize("HQ,HK,D,s,n,split", [
    (4, 2, 16, 4, 3, 16), (6, 1, 8, 16, 5, 128), (2, 2, 16, 8, 1, 16),
    (4, 1, 16, 4, 20, 256),  # n > 16: the attention gathers its blocks in several chunks
])
def test_kernel_matches_reference_rows_of_different_lengths(monkeypatch, HQ, HK, D, s, n, split):
    monkeypatch.setattr(decode_triton, "BLOCKS_PER_SPLIT", split)  # several splits to merge
    L = 80 * s
    q, k, v, kbar = make(3, L, HQ, HK, D, s, seed=n)
    lengths = [L, 1, 37 * s + 3]  # long, a single token, a partial current block
    ref, ridx, out, idx = both(q, k, v, kbar, lengths, s, n)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    assert torch.equal(idx.cpu(), ridx.cpu())


def test_kernel_ties_go_to_the_lower_block_across_splits(monkeypatch):
    monkeypatch.setattr(decode_triton, "BLOCKS_PER_SPLIT", 16)
    q, k, v, kbar = make(1, 4 * 70, 4, 1, 16, 4, tie=True)
    _, ridx, out, idx = both(q, k, v, kbar, [4 * 70], 4, 6)
    assert idx[0, 0].tolist() == [0, 1, 2, 3, 4, 69] == ridx[0, 0].tolist()


def test_kernel_reads_only_selected_blocks():
    q, k, v, kbar = make(2, 4 * 40, 4, 2, 16, 4, seed=3)
    lengths = torch.tensor([160, 99], device=DEVICE)
    o, idx = decode.sparse_decode(q, k, v, kbar, lengths, 4, 3, backend="triton", return_indices=True)
    keep = torch.zeros(k.shape[:3], dtype=torch.bool, device=DEVICE)
    for b in range(2):
        for h in range(2):
            for c in idx[b, h].tolist():
                if c >= 0:
                    keep[b, c * 4:(c + 1) * 4, h] = True
    poison = lambda x: torch.where(keep[..., None], x, torch.full_like(x, float("nan")))  # noqa: E731
    o2 = decode.sparse_decode(q, poison(k), poison(v), kbar, lengths, 4, 3, backend="triton")
    torch.testing.assert_close(o2, o)


def test_kernel_half_precision_cache():
    q, k, v, kbar = make(2, 16 * 24, 16, 1, 64, 16, dtype=torch.bfloat16, seed=4)
    ref, ridx, out, idx = both(q, k, v, kbar, [16 * 24, 16 * 9 + 5], 16, 4)
    assert torch.equal(idx.cpu(), ridx.cpu())
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("G,n,D", [(1, 1, 16), (3, 2, 16), (32, 5, 16), (2, 31, 16), (2, 3, 64), (1, 3, 128)])
def test_kernel_chunk_queries_over_the_capacity(G, n, D):
    """T new queries per row (a chunk appended to the cache), grid bounded by the capacity (as in a
    captured step), ragged rows; budgets from 1 to past the block count, GQA groups 1..32, head
    dims 16/64/128."""
    s, HK, T = 4, 2 if G < 32 else 1, 3
    L = 4 * 30  # capacity: 30 blocks
    q, k, v, kbar = make(2, L, G * HK, HK, D, s, seed=G + n)
    q = q[:, None].expand(2, T, G * HK, D) * torch.tensor([1.0, -0.5, 2.0], device=DEVICE)[None, :, None, None]
    lengths = torch.tensor([L - 5, 9 * s + 2], device=DEVICE)  # the chunk's last query at lengths - 1
    ref, ridx = decode.sparse_decode(q, k, v, kbar, lengths, s, n, backend="torch", return_indices=True)
    out, idx = decode.sparse_decode(q, k, v, kbar, lengths, s, n, backend="triton", return_indices=True)
    assert idx.shape == (2, T, HK, n)
    assert torch.equal(idx.cpu(), ridx.cpu())
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    # each query of the chunk equals a one-query call at its own length
    for j in range(T):
        one = decode.sparse_decode(q[:, j], k, v, kbar, lengths - (T - 1 - j), s, n, backend="torch")
        torch.testing.assert_close(out[:, j], one, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("splits", [1, 2, 8])
def test_kernel_attention_splits_agree(splits):
    """The attention over the selected blocks in one program or split flash-decoding style (with
    the combine step) gives the reference output and selection."""
    from ssa.ops.triton._decode import sparse_decode_triton

    s, n = 4, 8
    q, k, v, kbar = make(2, 4 * 24, 6, 2, 16, s, seed=splits)
    lengths = torch.tensor([4 * 24, 4 * 5 + 1], device=DEVICE)
    ref, ridx = decode.sparse_decode(q, k, v, kbar, lengths, s, n, backend="torch", return_indices=True)
    out, idx = sparse_decode_triton(q[:, None], k, v, kbar, lengths, s, n, q.shape[-1] ** -0.5, 4 * 24,
                                    attention_splits=splits)
    torch.testing.assert_close(out[:, 0], ref, atol=2e-5, rtol=2e-5)
    assert torch.equal(decode.sort_block_indices(idx[:, 0]).cpu(), ridx.cpu())
    with pytest.raises(ValueError, match="attention_splits must be a power of two"):
        sparse_decode_triton(q[:, None], k, v, kbar, lengths, s, n, 0.25, 4 * 24, attention_splits=3)
