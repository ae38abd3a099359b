"""Dense causal attention over packed documents (`cu_seqlens`, batch 1): each document only itself.

Two paths, the same function:
  * PyTorch's varlen flash kernel (`torch.nn.attention.varlen.varlen_attn`) for fp16/bf16 CUDA
    tensors when this torch has it: one launch for all documents, and no work at all on pairs of
    tokens from different documents, so a packed row costs what its documents cost (less than the
    unmasked row). This is the fast path that the training model takes.
  * SDPA per document otherwise (CPU, float32, older torch): exact, one launch per document.

A FlexAttention document mask was the third candidate; `benchmarks/device/docmask.sh` times all
three against unmasked SDPA. Flex needs a block mask built per batch of boundaries and a compiled
kernel, and still visits every tile next to the diagonal of the whole row, which the varlen kernel
skips (benchmarks/RESULTS.md has the numbers).
"""

from __future__ import annotations

import inspect

import torch

from . import reference
from ._checks import TensorMemo

try:
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # torch < 2.10
    _varlen_attn = None

_VARLEN_PARAMS = set(inspect.signature(_varlen_attn).parameters) if _varlen_attn is not None else set()
# torch 2.10 spells causality `is_causal=True`; later versions a (left, right) window of (-1, 0).
_CAUSAL = {"window_size": (-1, 0)} if "window_size" in _VARLEN_PARAMS else {"is_causal": True}

# The varlen kernel needs the longest document as a host int: read once per cu_seqlens tensor.
_LONGEST = TensorMemo()


def longest_document(cu_seqlens: torch.Tensor) -> int:
    value = _LONGEST.get(cu_seqlens, None)
    if value is None:
        value = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        _LONGEST.put(cu_seqlens, None, value)
    return value


def check_max_seqlen(cu_seqlens: torch.Tensor, max_seqlen: int) -> None:
    """A bound below the longest document would silently drop keys. Not under torch.compile, where
    the value read back would be specialised on; the callers there pass the row length."""
    if not torch.compiler.is_compiling() and max_seqlen < longest_document(cu_seqlens):
        raise ValueError(f"max_seqlen={max_seqlen} is below the longest document ({longest_document(cu_seqlens)} tokens)")


def varlen_available(q: torch.Tensor) -> bool:
    return _varlen_attn is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def document_attention(q, k, v, scale: float, cu_seqlens: torch.Tensor, max_seqlen: int | None = None) -> torch.Tensor:
    """Causal attention of q, k, v [1, T, H, D] (GQA) within the documents of cu_seqlens.

    `max_seqlen` bounds every document's length (the varlen kernel sizes its grid with it; a larger
    bound only adds work items that exit at once). None reads the longest document from the device,
    except under torch.compile, where a value read back would be specialised on (a recompile per
    batch): the whole sequence length bounds it there."""
    if not varlen_available(q):
        if torch.compiler.is_compiling():  # the per-document loop's count is a host value: one masked call instead
            return masked_document_attention(q, k, v, scale, cu_seqlens)
        return reference.full_attention(q, k, v, scale, cu_seqlens)
    HQ, HK = q.shape[2], k.shape[2]
    extra = dict(_CAUSAL)
    if HQ != HK:
        if "enable_gqa" in _VARLEN_PARAMS:
            extra["enable_gqa"] = True
        else:
            k, v = (x.repeat_interleave(HQ // HK, dim=2) for x in (k, v))
    cu = cu_seqlens.to(torch.int32)
    if torch.compiler.is_compiling():
        max_seqlen = max_seqlen or q.shape[1]
    elif max_seqlen is None:
        max_seqlen = longest_document(cu_seqlens)
    else:
        check_max_seqlen(cu_seqlens, max_seqlen)
    o = _varlen_attn(q[0], k[0], v[0], cu, cu, max_seqlen, max_seqlen, scale=scale, **extra)
    return o[None]


def masked_document_attention(q, k, v, scale: float, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """The same function as one SDPA call under a [T, T] document-causal mask: shapes independent of
    the number of documents and no host reads, so a compiled graph serves every batch. Quadratic in
    T (mask and, on CPU, scores): the compiled path where the varlen kernel is missing."""
    T = q.shape[1]
    t = torch.arange(T, device=q.device)
    doc = torch.searchsorted(cu_seqlens[1:].long(), t, right=True)  # document of every token
    mask = (doc[:, None] == doc[None, :]) & (t[None, :] <= t[:, None])
    return reference.full_attention(q, k, v, scale, attn_mask=mask)
