"""Argument validation shared by every public op.

Errors name the argument and what is allowed, so a user can fix the call without reading code.
"""

from __future__ import annotations

import weakref

import torch

BACKENDS = ("auto", "torch", "triton")


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")
    return value


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_scale(scale, head_dim: int) -> float:
    if scale is None:
        return head_dim ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return float(scale)


def _check_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [batch, seq, heads, dim], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape [batch, seq, heads, dim] (4 dims), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")


def check_qkv(q, k, v=None) -> tuple[int, int, int, int, int]:
    """Validate [B, T, H, D] inputs with GQA; returns (B, T, HQ, HK, D)."""
    named = [("q", q), ("k", k)] + ([("v", v)] if v is not None else [])
    for name, x in named:
        _check_tensor(name, x)
    B, T, HQ, D = q.shape
    for name, x in named[1:]:
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; all inputs must share one device")
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but q has {q.dtype}; all inputs must share one dtype")
        if x.shape[0] != B or x.shape[1] != T or x.shape[3] != D:
            raise ValueError(
                f"{name} must have shape [batch={B}, seq={T}, kv_heads, dim={D}] to match q, got {tuple(x.shape)}"
            )
    HK = k.shape[2]
    if v is not None and v.shape[2] != HK:
        raise ValueError(f"v must have the same number of heads as k ({HK}), got {v.shape[2]}")
    if HK == 0 or HQ % HK != 0:
        raise ValueError(f"q heads ({HQ}) must be a multiple of k/v heads ({HK}) for grouped-query attention")
    if T == 0:
        raise ValueError("seq length must be >= 1, got 0")
    return B, T, HQ, HK, D


def check_block_indices(block_indices, B: int, T: int, HK: int, device, block_size: int, block_count,
                        check_values: bool = True) -> int:
    """Validate user-given block indices [B, T, HK, n]; returns n.

    Shape, dtype and device always (free). With `check_values` also the ids (one reduction and one
    device sync): each must be -1 (empty slot) or a block that query t may see, 0 <= id <= t //
    block_size. Indices built with another block size or for another sequence fail here instead of
    raising an IndexError in one backend and being silently masked in another.
    """
    if not isinstance(block_indices, torch.Tensor):
        raise TypeError(f"block_indices must be an int32 torch.Tensor [batch, seq, kv_heads, n], got {type(block_indices).__name__}")
    if block_indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"block_indices must be int32 (or int64), got {block_indices.dtype}")
    if block_indices.dim() != 4 or tuple(block_indices.shape[:3]) != (B, T, HK):
        raise ValueError(
            f"block_indices must have shape [batch={B}, seq={T}, kv_heads={HK}, n], got {tuple(block_indices.shape)}"
        )
    if block_indices.device != device:
        raise ValueError(f"block_indices is on {block_indices.device} but q is on {device}")
    n = block_indices.shape[3]
    if n == 0:
        raise ValueError("block_indices must have at least one slot per query (n >= 1), got n=0")
    if block_count is not None and block_count != n:
        raise ValueError(
            f"block_count={block_count} but block_indices has n={n} slots per query; pass block_count={n} or None"
        )
    if check_values:
        own = (torch.arange(T, device=device) // block_size)[None, :, None, None]
        bad = (block_indices < -1) | (block_indices > own)
        if bool(bad.any()):
            b, t, h, j = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"block_indices[{b}, {t}, {h}, {j}] = {int(block_indices[b, t, h, j])} is out of range: query t={t} "
                f"may select blocks 0..{t // block_size} (block_size={block_size}) or -1 for an empty slot; "
                "were the indices built with another block_size?"
            )
    return n


class TensorMemo:
    """Values derived on the host from a small tensor, remembered for that tensor object while it
    lives and is not modified in place (its version counter). A model passes one `cu_seqlens` to
    every layer's ops, so reading its values (a device sync) then happens once per forward."""

    def __init__(self):
        self._entries: dict[int, tuple] = {}

    def get(self, x: torch.Tensor, key):
        hit = self._entries.get(id(x))
        if hit is not None and hit[0]() is x and hit[1] == (x._version, key):
            return hit[2]
        return None

    def put(self, x: torch.Tensor, key, value) -> None:
        ident = id(x)
        self._entries[ident] = (weakref.ref(x, lambda _: self._entries.pop(ident, None)), (x._version, key), value)


_CHECKED_CU_SEQLENS = TensorMemo()


def check_cu_seqlens(cu_seqlens, batch: int, seq_len: int, device) -> None:
    """Document boundaries of a packed batch: int32/int64 [num_docs + 1], 0 first, seq_len last,
    non-decreasing, on q's device, with batch size 1 (flash-attn's varlen convention)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be an int32 torch.Tensor [num_docs + 1] or None, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 (or int64), got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have shape [num_docs + 1] with num_docs >= 1, got {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != torch.device(device):
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {device}")
    if batch != 1:
        raise ValueError(f"with cu_seqlens the batch size must be 1 (documents concatenated along seq), got {batch}")
    # Reading the values is a device sync, and under torch.compile a value the graph would be
    # specialised on (a recompile per batch of documents): compiled callers pass boundaries the
    # model already checked eagerly (`packed_documents`), so only the shape is checked there.
    if torch.compiler.is_compiling() or _CHECKED_CU_SEQLENS.get(cu_seqlens, seq_len):
        return
    first, last, steps_ok = (int(x) for x in torch.stack([
        cu_seqlens[0], cu_seqlens[-1], (cu_seqlens[1:] >= cu_seqlens[:-1]).all().to(cu_seqlens.dtype)]).tolist())
    if first != 0 or last != seq_len or not steps_ok:
        raise ValueError(
            f"cu_seqlens must start at 0, end at seq_len={seq_len} and never decrease, got {cu_seqlens.tolist()}"
        )
    _CHECKED_CU_SEQLENS.put(cu_seqlens, seq_len, True)
