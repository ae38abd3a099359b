"""Triton kernels for the sparse stream: fused exact block selection and block-sparse attention.

Importing this package raises ImportError when Triton is missing; `ssa.ops.api` then treats the
Triton backend as unavailable and uses the reference. The functions take the same arguments as the
reference (already validated by `ssa.ops.api`) and compute the same function up to float rounding.
"""

from __future__ import annotations

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except Exception as err:  # a broken install (e.g. no driver bindings) counts as missing too
    raise ImportError(f"ssa.ops.triton needs a working `triton` package: {err}") from err

from ._interpreter_compat import apply as _apply_interpreter_compat  # noqa: E402

_apply_interpreter_compat()

from ._align import alignment_loss, gated_alignment  # noqa: E402
from .ops import (  # noqa: E402
    block_sparse_attention,
    compressed_attention,
    select_blocks,
    sliding_window_attention,
)

__all__ = ["select_blocks", "block_sparse_attention", "compressed_attention", "sliding_window_attention",
           "alignment_loss", "gated_alignment"]
