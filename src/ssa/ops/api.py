"""Public functional ops: validate arguments, then dispatch to the reference or a fast kernel.

`backend="auto"` picks the Triton kernels for CUDA tensors when Triton is importable, and the
pure-PyTorch reference otherwise. Both compute the same function up to floating-point tolerance.

Packed documents follow flash-attn's varlen convention: batch size 1, the documents concatenated
along the sequence, and `cu_seqlens` (int32 [num_docs + 1]: 0, end of document 1, ..., seq_len) their
boundaries. Every document is then its own sequence: its tokens attend only to its own earlier
tokens, its block grid starts at its first token, and block ids (given or returned) count from
there. The result equals running the documents one at a time and concatenating.
"""

from __future__ import annotations

import importlib

import torch

from . import dense, reference
from ._checks import (
    check_backend, check_block_indices, check_cu_seqlens, check_positive_int, check_qkv, check_scale,
)


_TRITON: list = []  # the lookup below, made once per process


def _triton_module():
    """The Triton kernels, or None when Triton (or a GPU build of it) is unavailable.

    Looked up once and kept: torch.compile cannot trace `importlib` and would otherwise break the
    graph at every op call of a compiled block; a list read is traced as a constant."""
    if not _TRITON:
        try:
            _TRITON.append(importlib.import_module("ssa.ops.triton"))
        except ImportError:
            _TRITON.append(None)
    return _TRITON[0]


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    check_backend(backend)
    if backend == "auto":
        return "triton" if x.is_cuda and _triton_module() is not None else "torch"
    if backend == "triton":
        if _triton_module() is None:
            raise ValueError("backend='triton' needs the `triton` package; install it or use backend='torch'")
        from .triton._common import interpreting

        # Checked here because Triton's own message for host tensors ("0 active drivers") names
        # neither the argument nor the way out.
        if not x.is_cuda and not interpreting():
            raise ValueError(
                f"backend='triton' needs CUDA tensors, got tensors on {x.device}; use backend='torch' "
                "(or 'auto'), or set TRITON_INTERPRET=1 before importing ssa to run the kernels in "
                "Triton's CPU interpreter"
            )
    return backend


def select_blocks(q, k, block_size: int = 16, block_count: int = 16, scale=None, backend: str = "auto",
                  cu_seqlens=None):
    """Top-`block_count` key blocks per query and KV head (docs/design.md §1.1).

    Returns int32 [B, T, HK, block_count]: valid block ids sorted ascending, the query's own block
    always among them, empty slots -1 at the end. Not differentiable (indices). With `cu_seqlens`
    (packed documents, module docstring) only the query's own document's blocks are scored.
    """
    B, T, HQ, HK, D = check_qkv(q, k)
    check_positive_int("block_size", block_size)
    check_positive_int("block_count", block_count)
    scale = check_scale(scale, D)
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, B, T, q.device)
    with torch.no_grad():
        return _implementation("select_blocks", backend, q)(q, k, block_size, block_count, scale, cu_seqlens)


def block_sparse_attention(
    q, k, v, block_size: int = 16, block_count: int | None = None, block_indices=None, scale=None,
    backend: str = "auto", return_lse: bool = False, cu_seqlens=None, check_indices: bool = True,
):
    """Causal attention of each query over its selected key blocks.

    With `block_indices=None` the blocks are chosen by `select_blocks` (`block_count` defaults to
    16). Given `block_indices` [B, T, HK, n], `block_count` may be left None or must equal n, and each
    id must be -1 (empty slot) or a block the query may see, 0 <= id <= t // block_size: checked
    with one reduction and a device sync. `check_indices=False` is the unchecked fast path for
    indices known to be valid (those of `select_blocks`, as the model passes them); invalid ids then
    give undefined results. Returns o [B, T, HQ, D] (and the natural-log log-sum-exp [B, T, HQ] in
    float32 if `return_lse`). With `cu_seqlens` (packed documents, module docstring) block ids count
    from the first token of the query's document and keys of other documents are never seen.
    """
    B, T, HQ, HK, D = check_qkv(q, k, v)
    check_positive_int("block_size", block_size)
    if block_count is not None:
        check_positive_int("block_count", block_count)
    scale = check_scale(scale, D)
    backend = resolve_backend(backend, q)
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, B, T, q.device)
    if block_indices is None:
        block_indices = select_blocks(q, k, block_size, block_count or 16, scale, backend, cu_seqlens)
    else:
        check_block_indices(block_indices, B, T, HK, q.device, block_size, block_count, check_indices)
    return _implementation("block_sparse_attention", backend, q)(
        q, k, v, block_indices, block_size, scale, return_lse, cu_seqlens)


def full_attention(q, k, v, scale=None, cu_seqlens=None, max_seqlen=None):
    """Causal softmax attention with GQA, [B, T, H, D] layout (PyTorch SDPA underneath).

    With `cu_seqlens` (packed documents, module docstring) each document attends only to itself:
    on the GPU through PyTorch's varlen flash kernel where it exists, else SDPA per document.
    `max_seqlen` (flash-attn's name) is an upper bound on the documents' lengths, e.g. the row
    length of packed rows; None finds the longest document (a device sync; under torch.compile the
    sequence length is used instead, so the graph does not depend on the batch's documents).
    """
    B, T, _, _, D = check_qkv(q, k, v)
    scale = check_scale(scale, D)
    if max_seqlen is not None:
        check_positive_int("max_seqlen", max_seqlen)
    if cu_seqlens is None:
        return reference.full_attention(q, k, v, scale)
    check_cu_seqlens(cu_seqlens, B, T, q.device)
    return dense.document_attention(q, k, v, scale, cu_seqlens, max_seqlen)


def _implementation(name: str, backend: str, x):
    """The one backend dispatch of every op: the Triton module's `name` when the backend resolves to
    Triton and it has one, else the reference's (same arguments, already validated)."""
    fast = getattr(_triton_module(), name, None) if resolve_backend(backend, x) == "triton" else None
    return fast or getattr(reference, name)


def _nsa_branch(name, size_name, size, q, k, v, scale, backend, cu_seqlens, **extra):
    """Checks and dispatch of the NSA branches, which take one size (block or window). With
    `cu_seqlens` the Triton path runs all packed documents in one launch; the reference runs each
    document on its own (it is the definition)."""
    B, T, _, _, D = check_qkv(q, k, v)
    check_positive_int(size_name, size)
    scale = check_scale(scale, D)
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, B, T, q.device)
    if extra.get("max_seqlen") is not None:
        check_positive_int("max_seqlen", extra["max_seqlen"])
        if cu_seqlens is not None:
            dense.check_max_seqlen(cu_seqlens, extra["max_seqlen"])
    return _implementation(name, backend, q)(q, k, v, size, scale, cu_seqlens, **extra)


def compressed_attention(q, k, v, block_size: int = 16, scale=None, backend: str = "auto", cu_seqlens=None,
                         max_seqlen=None):
    """NSA compression branch over mean-pooled K/V of complete preceding blocks.

    With `cu_seqlens` (packed documents) each document has its own block grid; on the GPU all
    documents take one SDPA call. `max_seqlen`, as in `full_attention`: a bound on the documents'
    lengths (the row length of packed rows), from which the GPU path sizes its key tiles without
    reading the lengths back (under torch.compile it would otherwise use the sequence length)."""
    return _nsa_branch("compressed_attention", "block_size", block_size, q, k, v, scale, backend, cu_seqlens,
                       max_seqlen=max_seqlen)


def sliding_window_attention(q, k, v, window: int = 128, scale=None, backend: str = "auto", cu_seqlens=None):
    """Causal attention over the last `window` positions (the query included).

    With `cu_seqlens` (packed documents) the window stops at the document's first token; on the GPU
    all documents take one launch of the block-sparse kernels."""
    return _nsa_branch("sliding_window_attention", "window", window, q, k, v, scale, backend, cu_seqlens)


ALIGN_DIRECTIONS = ("both", "sparsity", "commitment", "none")
# "l2" is the model config's name for the squared error; "mse" is accepted as the same thing.
ALIGN_KINDS = ("smooth_l1", "l2", "mse")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_alignment_args(o_full, o_sparse, direction, kind) -> None:
    for name, x in (("o_full", o_full), ("o_sparse", o_sparse)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if o_sparse.shape != o_full.shape:
        raise ValueError(
            f"o_sparse must have the shape of o_full {tuple(o_full.shape)}, got {tuple(o_sparse.shape)}"
        )
    if o_sparse.dtype != o_full.dtype:
        raise TypeError(f"o_sparse has dtype {o_sparse.dtype} but o_full has {o_full.dtype}; both must share one dtype")
    if o_sparse.device != o_full.device:
        raise ValueError(f"o_sparse is on {o_sparse.device} but o_full is on {o_full.device}; both must share one device")
    if not isinstance(direction, str) or direction not in ALIGN_DIRECTIONS:
        raise ValueError(f"direction must be one of {ALIGN_DIRECTIONS}, got {direction!r}")
    if not isinstance(kind, str) or kind not in ALIGN_KINDS:
        raise ValueError(f"kind must be one of {ALIGN_KINDS}, got {kind!r}")


def alignment_loss(o_full, o_sparse, direction: str = "both", kind: str = "smooth_l1", backend: str = "auto"):
    """SSA alignment of a layer's full and sparse attention outputs (docs/design.md §1.3): float32 0-dim.

    `direction`: "both" = dist(o_full, o_sparse.detach()) + dist(o_full.detach(), o_sparse);
    "sparsity" = the first term only (gradient into o_full only); "commitment" = the second only
    (gradient into o_sparse only); "none" = a float32 zero without gradient. `kind`: "smooth_l1"
    (beta 1) or the squared error ("l2" or "mse"); both are means over all elements, in float32.
    Any shape; both inputs must share shape, dtype and device. Gradients come back in their dtype.
    """
    _check_alignment_args(o_full, o_sparse, direction, kind)
    return _implementation("alignment_loss", backend, o_full)(o_full, o_sparse, direction, kind)


def gated_alignment(o_full, o_sparse, gate, mode: str, direction: str = "both", kind: str = "smooth_l1",
                    backend: str = "auto"):
    """A layer's gated output and the alignment of its gated streams, in one pass (docs/design.md §1.3).

    Returns (gate * o_mode, alignment_loss(gate * o_full, gate * o_sparse, direction, kind)) with
    o_mode the `mode` stream ("full" or "sparse"); gradients reach o_full, o_sparse and gate as
    through that composition. o_full and o_sparse are [B, T, H, D], `gate` is [B, T, H, 1] (one
    scalar per token and head); all three share dtype and device. On the GPU the gate products, the
    alignment and their gradients take one kernel each way instead of a dozen elementwise passes.
    """
    _check_alignment_args(o_full, o_sparse, direction, kind)
    if not isinstance(gate, torch.Tensor):
        raise TypeError(f"gate must be a torch.Tensor, got {type(gate).__name__}")
    if o_full.dim() != 4 or tuple(gate.shape) != (*o_full.shape[:3], 1):
        raise ValueError(f"o_full must be [B, T, H, D] and gate [B, T, H, 1]; got o_full {tuple(o_full.shape)}, "
                         f"gate {tuple(gate.shape)}")
    if gate.dtype != o_full.dtype or gate.device != o_full.device:
        raise TypeError(f"gate ({gate.dtype}, {gate.device}) must share dtype and device with o_full "
                        f"({o_full.dtype}, {o_full.device})")
    if mode not in ("full", "sparse"):
        raise ValueError(f"mode must be 'full' or 'sparse', got {mode!r}")
    return _implementation("gated_alignment", backend, o_full)(o_full, o_sparse, gate, mode, direction, kind)
