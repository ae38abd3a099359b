"""User-given block indices are validated in the checked API, identically in every backend."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ssa.ops import api  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch"] + (["triton"] if api._triton_module() is not None else [])
B, T, HQ, HK, D, S, N = 1, 20, 4, 2, 8, 4, 2


def _qkv():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, T, h, D, generator=g).to(DEVICE) for h in (HQ, HK, HK)]


def _valid_indices():
    q, k, _ = _qkv()
    return api.select_blocks(q, k, S, N, backend="torch")


def _corrupt(value, t=17, h=1):
    idx = _valid_indices().clone()
    idx[0, t, h, 0] = value
    return idx


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "idx_fn,label",
    [
        (lambda: _corrupt(T // S), "past the last block"),  # id 5 of 5 blocks: IndexError before, in one head
        (lambda: _corrupt(4, t=9), "future block"),  # query 9 is in block 2: built with a smaller block_size
        (lambda: _corrupt(-2), "below -1"),
        (lambda: _corrupt(1000, h=0), "far out"),
    ],
)
def test_out_of_range_ids_are_refused(backend, idx_fn, label):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"block_indices\[0, \d+, \d, 0\] = -?\d+ is out of range.*block_size=4"):
        api.block_sparse_attention(q, k, v, S, block_indices=idx_fn(), backend=backend)


def test_indices_built_with_a_smaller_block_size_are_refused():
    q, k, v = _qkv()
    idx = api.select_blocks(q, k, 2, N, backend="torch")  # ids up to 9 for blocks of 2
    with pytest.raises(ValueError, match="another block_size"):
        api.block_sparse_attention(q, k, v, S, block_indices=idx, backend="torch")


def test_block_count_must_match_the_indices_width():
    q, k, v = _qkv()
    idx = _valid_indices()
    with pytest.raises(ValueError, match=r"block_count=3 but block_indices has n=2"):
        api.block_sparse_attention(q, k, v, S, 3, block_indices=idx, backend="torch")
    with pytest.raises(ValueError, match="n >= 1"):
        api.block_sparse_attention(q, k, v, S, block_indices=idx[..., :0], backend="torch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_indices_pass_and_the_unchecked_path_agrees(backend):
    q, k, v = _qkv()
    idx = _valid_indices()
    idx[0, 11, 0, 0] = -1  # an empty slot is valid
    checked = api.block_sparse_attention(q, k, v, S, N, block_indices=idx, backend=backend)
    unchecked = api.block_sparse_attention(q, k, v, S, block_indices=idx, backend=backend, check_indices=False)
    assert torch.equal(checked, unchecked)
    selected = api.block_sparse_attention(q, k, v, S, N, backend=backend)  # select_blocks' own indices
    assert torch.equal(selected[0, 10], checked[0, 10])
