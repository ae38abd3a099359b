"""Bad input to the public ops raises ValueError / TypeError naming the argument."""

import pytest
import torch

from ssa.ops import block_sparse_attention, full_attention, select_blocks, sliding_window_attention


def qkv(T=20, hq=4, hk=2, d=8):
    return torch.randn(1, T, hq, d), torch.randn(1, T, hk, d), torch.randn(1, T, hk, d)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda q, k, v: select_blocks(q[0], k), ValueError, "q must have shape"),
        (lambda q, k, v: select_blocks(q, k[:, :10]), ValueError, "k must have shape"),
        (lambda q, k, v: select_blocks(q, k.double()), TypeError, "k has dtype"),
        (lambda q, k, v: select_blocks(q.long(), k), TypeError, "q must be float"),
        (lambda q, k, v: select_blocks(q.numpy(), k), TypeError, "q must be a torch.Tensor"),
        (lambda q, k, v: select_blocks(q, k, block_size=0), ValueError, "block_size"),
        (lambda q, k, v: select_blocks(q, k, block_count=0), ValueError, "block_count"),
        (lambda q, k, v: select_blocks(q, k, block_count=2.0), TypeError, "block_count"),
        (lambda q, k, v: select_blocks(q, k, backend="cuda"), ValueError, "backend"),
        (lambda q, k, v: select_blocks(q, k, scale=-1.0), ValueError, "scale"),
        (lambda q, k, v: block_sparse_attention(q, k, v[..., :4]), ValueError, "v must have shape"),
        (lambda q, k, v: block_sparse_attention(q, k, v, block_indices=torch.zeros(1, 20, 2, 3)), TypeError, "block_indices"),
        (lambda q, k, v: block_sparse_attention(q, k, v, block_indices=torch.zeros(1, 20, 1, 3, dtype=torch.int32)), ValueError, "block_indices"),
        (lambda q, k, v: full_attention(q, k.to("meta"), v), ValueError, "device"),
        (lambda q, k, v: sliding_window_attention(q, k, v, window=0), ValueError, "window"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call(*qkv())


def test_heads_must_divide():
    q, k, v = qkv(hq=4, hk=3)
    with pytest.raises(ValueError, match="multiple of k/v heads"):
        block_sparse_attention(q, k, v)


def test_explicit_triton_backend_without_triton_is_an_error(monkeypatch):
    # Asking for Triton explicitly must never silently fall back to the reference when it is missing.
    import ssa.ops.api as api

    monkeypatch.setattr(api, "_triton_module", lambda: None)
    q, k, v = qkv()
    with pytest.raises(ValueError, match="triton"):
        select_blocks(q, k, backend="triton")
    assert select_blocks(q, k, backend="auto").shape == (1, 20, 2, 16)
