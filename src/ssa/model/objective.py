"""The SSA objective's model-side pieces (docs/design.md §1.3): the mode draw and the per-layer alignment.

They live beside the model because the alignment needs both attention streams of every layer,
which exist only inside the forward pass.
"""

from __future__ import annotations

import random

import torch

from .. import ops


def draw_mode(full_ratio: float) -> str:
    """One draw per forward, shared by all layers, from torch's global RNG. The trainer does not
    use it: it passes `scheduled_mode` (below) as `attention_mode`; this is the draw of a plain
    `model.train()` forward that names no mode."""
    return "full" if torch.rand(()).item() < full_ratio else "sparse"


def scheduled_mode(full_ratio: float, seed: int, step: int, micro_batch: int = 0) -> str:
    """The SSA training mode of (seed, optimizer step, micro-batch), from a generator of its own.

    A pure function of its arguments: every data-parallel rank computes the same mode without
    communicating, a resumed run repeats it, and nothing else (data order, dropout, evaluation)
    moves it. Pass micro_batch=0 for one draw per optimizer step.
    """
    u = random.Random(f"ssa-mode:{seed}:{step}:{micro_batch}").random()
    return "full" if u < full_ratio else "sparse"


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


def gated_alignment(
    o_full: torch.Tensor, o_sparse: torch.Tensor, gate: torch.Tensor, mode: str, direction: str, kind: str,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's gated output for `mode` and the alignment of the gated streams (`align_on="gated"`).

    Equals `gate * o_mode` and `alignment_loss(gate * o_full, gate * o_sparse, ...)`; on the GPU the
    two gate products, the alignment and all their gradients are one fused kernel each way
    (`ops.gated_alignment`), which saves about a dozen elementwise launches per layer and step.
    """
    return ops.gated_alignment(o_full, o_sparse, gate, mode, direction, kind, backend=backend)
