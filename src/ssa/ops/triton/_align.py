"""The SSA alignment loss in two fused elementwise kernels (see `reference.alignment_loss`).

Eager PyTorch spends about ten memory passes over [B, T, H, d] tensors per layer on it (float32
casts, difference, abs/where, mean, twice over for the two terms, and as many again backward). Here
the forward reads a and b once and writes one float32 partial sum per program; the backward reads a
and b once and writes the gradients the direction needs, already in the input dtype.

For "both" the two terms have the same value, so the loss is 2 * dist(a, b), while each input gets
the gradient of one term only: grad_a = dist'(a - b) * g and grad_b = -dist'(a - b) * g, with
dist'(d) = clamp(d, -1, 1) / N (smooth L1, beta 1) or 2 d / N (squared error).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference

# dtypes the kernels handle; anything else (float64) goes to the reference.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Elements per program. The kernels are pure streams, so a program should move enough bytes to hide
# its launch and reduction: 4096 elements with 8 warps is 16 per thread, two 16-byte loads per input
# in bf16, and 2048 partial sums for an [1, 8192, 16, 64] tensor.
BLOCK = 4096
NUM_WARPS = 8


@triton.jit
def _align_fwd_kernel(a_ptr, b_ptr, partial_ptr, n, SQUARED: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    # int64 offsets: B * T * H * d passes 2^31 for long sequences, and the cost is nil in a stream.
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    # Read once, never again in this step's forward: do not let them push other data out of L2.
    a = tl.load(a_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    d = a - b
    if SQUARED:
        e = d * d
    else:
        z = tl.abs(d)
        e = tl.where(z < 1.0, 0.5 * z * z, z - 0.5)
    # Masked lanes load a = b = 0, so they add exactly 0 under either distance.
    tl.store(partial_ptr + pid, tl.sum(e, axis=0))


@triton.jit
def _align_bwd_kernel(
    a_ptr, b_ptr, g_ptr, ga_ptr, gb_ptr, n, coef,
    SQUARED: tl.constexpr, WRITE_A: tl.constexpr, WRITE_B: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    # The upstream gradient stays on the device: reading it here avoids a host sync per layer.
    scale = tl.load(g_ptr) * coef
    d = a - b
    if SQUARED:
        slope = d
    else:
        # Same branches as PyTorch's smooth_l1 backward (a NaN difference stays NaN).
        slope = tl.where(d > 1.0, 1.0, tl.where(d < -1.0, -1.0, d))
    ga = slope * scale
    if WRITE_A:
        tl.store(ga_ptr + offs, ga.to(ga_ptr.dtype.element_ty), mask=mask)
    if WRITE_B:
        # Exact negation, so grad_b == -grad_a bit for bit, as in the reference.
        tl.store(gb_ptr + offs, (-ga).to(gb_ptr.dtype.element_ty), mask=mask)


def _squared(kind: str) -> bool:
    return kind != "smooth_l1"


def forward_value(a: torch.Tensor, b: torch.Tensor, kind: str, terms: int) -> torch.Tensor:
    """terms * mean(dist(a, b)) as a float32 0-dim tensor; a and b contiguous, same shape and dtype."""
    n = a.numel()
    programs = triton.cdiv(n, BLOCK)
    partials = torch.empty(programs, device=a.device, dtype=torch.float32)
    if programs:
        _align_fwd_kernel[(programs,)](a, b, partials, n, SQUARED=_squared(kind), BLOCK=BLOCK, num_warps=NUM_WARPS)
    if n == 0:  # the mean of nothing is NaN, as in the reference
        return partials.new_full((), float("nan"))
    # Summing the partials with torch keeps the result deterministic (no atomics); the mean and the
    # factor 2 of "both" go into one scale, so the whole loss costs two launches after the kernel.
    return partials.sum() * (terms / n)


def backward_grads(a, b, g, kind: str, write_a: bool, write_b: bool):
    """(grad_a or None, grad_b or None) in the input dtype, for upstream grad g (float32 0-dim)."""
    n = a.numel()
    ga = torch.empty_like(a) if write_a else None
    gb = torch.empty_like(b) if write_b else None
    if n and (write_a or write_b):
        squared = _squared(kind)
        coef = (2.0 if squared else 1.0) / n
        g = g.to(device=a.device, dtype=torch.float32).contiguous()
        # Unused gradient pointers are never touched (the store is compiled out); pass any tensor.
        _align_bwd_kernel[(triton.cdiv(n, BLOCK),)](
            a, b, g, ga if write_a else a, gb if write_b else b, n, coef,
            SQUARED=squared, WRITE_A=write_a, WRITE_B=write_b, BLOCK=BLOCK, num_warps=NUM_WARPS,
        )
    return ga, gb


class _AlignmentLoss(torch.autograd.Function):
    """terms * dist(a, b); the gradient goes to whichever of a and b requires it (one term's worth).

    The caller detaches the input a direction must not reach, so that which inputs get a gradient
    (and whether the loss requires grad at all) is exactly as in the reference.
    """

    @staticmethod
    def forward(ctx, a, b, kind: str, terms: int):
        a, b = a.contiguous(), b.contiguous()
        ctx.save_for_backward(a, b)
        ctx.kind = kind
        return forward_value(a, b, kind, terms)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga, gb = backward_grads(a, b, g, ctx.kind, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return ga, gb, None, None


def alignment_loss(o_full: torch.Tensor, o_sparse: torch.Tensor, direction: str, kind: str) -> torch.Tensor:
    """Fused `reference.alignment_loss` (arguments validated by ssa.ops.api)."""
    if o_full.dtype not in KERNEL_DTYPES or direction == "none":
        return reference.alignment_loss(o_full, o_sparse, direction, kind)
    if direction == "sparsity":
        return _AlignmentLoss.apply(o_full, o_sparse.detach(), kind, 1)
    if direction == "commitment":
        return _AlignmentLoss.apply(o_full.detach(), o_sparse, kind, 1)
    return _AlignmentLoss.apply(o_full, o_sparse, kind, 2)
