"""The SSA objective's model-side pieces (DESIGN §1.3): the mode draw and the per-layer alignment.

They live beside the model because the alignment needs both attention streams of every layer,
which exist only inside the forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_mode(full_ratio: float) -> str:
    """One draw per forward, shared by all layers. Uses torch's global RNG so resume is exact."""
    return "full" if torch.rand(()).item() < full_ratio else "sparse"


def alignment_loss(o_full: torch.Tensor, o_sparse: torch.Tensor, direction: str, kind: str) -> torch.Tensor:
    """Bidirectional stop-gradient alignment of one layer's two attention outputs.

    The sparsity term pulls full attention toward the sparse output (gradient into the full stream
    only); the commitment term keeps sparse attention near full attention (gradient into the sparse
    stream only). Computed in float32, mean over all elements.
    """
    distance = (lambda a, b: F.smooth_l1_loss(a, b, beta=1.0)) if kind == "smooth_l1" else F.mse_loss
    o_full, o_sparse = o_full.float(), o_sparse.float()
    loss = o_full.new_zeros(())
    if direction in ("both", "sparsity"):
        loss = loss + distance(o_full, o_sparse.detach())
    if direction in ("both", "commitment"):
        loss = loss + distance(o_full.detach(), o_sparse)
    return loss
