"""Argument validation shared by every public op.

Errors name the argument and what is allowed, so a user can fix the call without reading code.
"""

from __future__ import annotations

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


def check_block_indices(block_indices, B: int, T: int, HK: int, device) -> None:
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
