"""The SSA objective's model-side pieces (docs/design.md §1.3): the mode draw and the per-layer alignment.

They live beside the model because the alignment needs both attention streams of every layer,
which exist only inside the forward pass.
"""

from __future__ import annotations

import torch

from .. import ops


def draw_mode(full_ratio: float) -> str:
    """One draw per forward, shared by all layers. Uses torch's global RNG so resume is exact."""
    return "full" if torch.rand(()).item() < full_ratio else "sparse"


def alignment_loss(
    o_full: torch.Tensor, o_sparse: torch.Tensor, direction: str, kind: str, backend: str = "auto"
) -> torch.Tensor:
    """Bidirectional stop-gradient alignment of one layer's two attention outputs.

    The sparsity term pulls full attention toward the sparse output (gradient into the full stream
    only); the commitment term keeps sparse attention near full attention (gradient into the sparse
    stream only). Computed in float32, mean over all elements. It runs in every layer of every SSA
    training step, so on the GPU it goes through the fused kernels of `ops.alignment_loss`.
    """
    return ops.alignment_loss(o_full, o_sparse, direction, kind, backend=backend)
