"""Functional attention ops, [batch, seq, heads, dim] layout, GQA native.

Kernels know nothing of models: these take tensors and return tensors.
"""

from .api import (
    alignment_loss,
    block_sparse_attention,
    compressed_attention,
    full_attention,
    gated_alignment,
    resolve_backend,
    select_blocks,
    sliding_window_attention,
)

__all__ = [
    "select_blocks",
    "block_sparse_attention",
    "full_attention",
    "compressed_attention",
    "sliding_window_attention",
    "alignment_loss",
    "gated_alignment",
    "resolve_backend",
]
