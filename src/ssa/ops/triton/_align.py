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


# ------------------------------------------------------------------------------------------------
# The gate products folded into the alignment: one kernel forward, one backward.
#
# In SSA training with `align_on="gated"` every layer computes o_full and o_sparse, multiplies each
# by the head-wise gate g [B, T, H, 1], aligns the two products and passes the mode's product on.
# Unfused that is two multiplies, the alignment, and backward the alignment gradient, one add into
# the mode's gradient, and for each stream a multiply by g and a multiply-and-sum for g's gradient,
# plus one more add for g: about a dozen launches and as many passes over [B, T, H, d] tensors. Here
# the forward reads o_full, o_sparse and g once and writes the mode's product and the partial sums;
# the backward reads them and the output gradient once and writes all three gradients.
#
# A program owns ROWS (b, t, h) rows of d elements, so the gate gradient (a sum over d) stays inside
# it. Inputs come with any strides (SDPA's output is a transposed view); the output is contiguous
# [B, T, H, d] and each stream's gradient has that stream's layout.
@triton.jit
def _row_offsets(r, T, H, s0, s1, s2):
    """Element offset of row r = (b * T + t) * H + h for a tensor with strides (s0, s1, s2, .)."""
    b = r // (T * H)
    rem = r % (T * H)
    return b * s0 + (rem // H) * s1 + (rem % H) * s2


@triton.jit
def _load_tile(pid, a_ptr, b_ptr, g_ptr, R, T, H, D, sa0, sa1, sa2, sa3, sb0, sb1, sb2, sb3, sg0, sg1, sg2,
               ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program pid's rows: their ids, the column ids, masks, the two streams' tiles [ROWS, BLOCK_D]
    and the gate as float32 [ROWS, 1]."""
    r = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    d = tl.arange(0, BLOCK_D)
    rmask = r < R
    mask = rmask[:, None] & (d < D)[None, :]
    a = tl.load(a_ptr + (_row_offsets(r, T, H, sa0, sa1, sa2)[:, None] + d[None, :] * sa3), mask=mask, other=0.0)
    b = tl.load(b_ptr + (_row_offsets(r, T, H, sb0, sb1, sb2)[:, None] + d[None, :] * sb3), mask=mask, other=0.0)
    g = tl.load(g_ptr + _row_offsets(r, T, H, sg0, sg1, sg2), mask=rmask, other=0.0).to(tl.float32)[:, None]
    return r, d, rmask, mask, a, b, g


@triton.jit
def _gated_align_fwd_kernel(
    a_ptr, b_ptr, g_ptr, out_ptr, partial_ptr, R, T, H, D,
    sa0, sa1, sa2, sa3, sb0, sb1, sb2, sb3, sg0, sg1, sg2,
    OUT_FULL: tl.constexpr, SQUARED: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    r, d, rmask, mask, a, b, g = _load_tile(pid, a_ptr, b_ptr, g_ptr, R, T, H, D, sa0, sa1, sa2, sa3, sb0, sb1, sb2,
                                            sb3, sg0, sg1, sg2, ROWS, BLOCK_D)
    # Each product rounded to the input dtype, as `g * o` gives it unfused: the stream passed on is
    # bit for bit the unfused one, and the distance sees the same operands.
    ga = (a.to(tl.float32) * g).to(a.dtype)
    gb = (b.to(tl.float32) * g).to(b.dtype)
    out = ga if OUT_FULL else gb
    tl.store(out_ptr + (r[:, None] * D + d[None, :]), out, mask=mask)
    diff = ga.to(tl.float32) - gb.to(tl.float32)
    if SQUARED:
        e = diff * diff
    else:
        z = tl.abs(diff)
        e = tl.where(z < 1.0, 0.5 * z * z, z - 0.5)
    tl.store(partial_ptr + pid, tl.sum(tl.sum(e, axis=1), axis=0))  # masked lanes add exactly 0


@triton.jit
def _gated_align_bwd_kernel(
    a_ptr, b_ptr, g_ptr, do_ptr, gl_ptr, da_ptr, db_ptr, dg_ptr, R, T, H, D, coef,
    sa0, sa1, sa2, sa3, sb0, sb1, sb2, sb3, sg0, sg1, sg2, so0, so1, so2, so3,
    sda0, sda1, sda2, sda3, sdb0, sdb1, sdb2, sdb3,
    OUT_FULL: tl.constexpr, HAS_DO: tl.constexpr, ALIGN_A: tl.constexpr, ALIGN_B: tl.constexpr,
    SQUARED: tl.constexpr, WRITE_A: tl.constexpr, WRITE_B: tl.constexpr, WRITE_G: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    r, d, rmask, mask, a, b, g = _load_tile(pid, a_ptr, b_ptr, g_ptr, R, T, H, D, sa0, sa1, sa2, sa3, sb0, sb1, sb2,
                                            sb3, sg0, sg1, sg2, ROWS, BLOCK_D)
    af, bf = a.to(tl.float32), b.to(tl.float32)
    diff = (af * g).to(a.dtype).to(tl.float32) - (bf * g).to(b.dtype).to(tl.float32)
    if SQUARED:
        slope = diff
    else:  # PyTorch's smooth_l1 backward branches (a NaN difference stays NaN)
        slope = tl.where(diff > 1.0, 1.0, tl.where(diff < -1.0, -1.0, diff))
    slope = slope * (tl.load(gl_ptr) * coef)
    # Gradients of the two gated products: each alignment term reaches one side, and the output
    # gradient reaches the mode's side.
    dga = slope if ALIGN_A else tl.zeros_like(slope)
    dgb = -slope if ALIGN_B else tl.zeros_like(slope)
    if HAS_DO:
        do = tl.load(do_ptr + (_row_offsets(r, T, H, so0, so1, so2)[:, None] + d[None, :] * so3),
                     mask=mask, other=0.0).to(tl.float32)
        if OUT_FULL:
            dga += do
        else:
            dgb += do
    if WRITE_A:
        offs = _row_offsets(r, T, H, sda0, sda1, sda2)[:, None] + d[None, :] * sda3
        tl.store(da_ptr + offs, (dga * g).to(da_ptr.dtype.element_ty), mask=mask)
    if WRITE_B:
        offs = _row_offsets(r, T, H, sdb0, sdb1, sdb2)[:, None] + d[None, :] * sdb3
        tl.store(db_ptr + offs, (dgb * g).to(db_ptr.dtype.element_ty), mask=mask)
    if WRITE_G:
        dg = tl.sum(dga * af + dgb * bf, axis=1)
        tl.store(dg_ptr + r, dg.to(dg_ptr.dtype.element_ty), mask=rmask)


def _gated_tiles(D: int) -> tuple[int, int]:
    """(ROWS, BLOCK_D): whole rows of d per program, about BLOCK elements per program."""
    block_d = 1 << max(0, (D - 1).bit_length())
    return max(1, BLOCK // block_d), block_d


def _gate_strides(gate):
    return gate.stride(0), gate.stride(1), gate.stride(2)


@torch.library.custom_op("ssa::gated_alignment_fwd_triton", mutates_args=())
def _gated_fwd_op(o_full: torch.Tensor, o_sparse: torch.Tensor, gate: torch.Tensor, out_full: bool,
                  align_full: bool, align_sparse: bool, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, D = o_full.shape
    R = B * T * H
    rows, block_d = _gated_tiles(D)
    programs = triton.cdiv(R, rows)
    out = torch.empty((B, T, H, D), device=o_full.device, dtype=o_full.dtype)
    partials = torch.empty(programs, device=o_full.device, dtype=torch.float32)
    if programs:
        _gated_align_fwd_kernel[(programs,)](
            o_full, o_sparse, gate, out, partials, R, T, H, D, *o_full.stride(), *o_sparse.stride(),
            *_gate_strides(gate), OUT_FULL=out_full, SQUARED=_squared(kind), ROWS=rows, BLOCK_D=block_d,
            num_warps=NUM_WARPS,
        )
    n = R * D
    if n == 0:  # the mean of nothing is NaN, as in the reference
        return out, partials.new_full((), float("nan"))
    return out, partials.sum() * ((int(align_full) + int(align_sparse)) / n)


@_gated_fwd_op.register_fake
def _(o_full, o_sparse, gate, out_full, align_full, align_sparse, kind):
    return torch.empty(o_full.shape, device=o_full.device, dtype=o_full.dtype), o_full.new_empty((), dtype=torch.float32)


@torch.library.custom_op("ssa::gated_alignment_bwd_triton", mutates_args=())
def _gated_bwd_op(
    o_full: torch.Tensor, o_sparse: torch.Tensor, gate: torch.Tensor, d_out: torch.Tensor | None,
    d_loss: torch.Tensor, out_full: bool, align_full: bool, align_sparse: bool, kind: str,
    write_full: bool, write_sparse: bool, write_gate: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, T, H, D = o_full.shape
    R = B * T * H
    rows, block_d = _gated_tiles(D)
    da, db, dg = _gradient_buffers(o_full, o_sparse, gate, write_full, write_sparse, write_gate)
    if R * D and (write_full or write_sparse or write_gate):
        squared = _squared(kind)
        d_loss = d_loss.to(device=o_full.device, dtype=torch.float32).reshape(1)
        do = d_out if d_out is not None else o_full  # an unread placeholder when there is no output gradient
        _gated_align_bwd_kernel[(triton.cdiv(R, rows),)](
            o_full, o_sparse, gate, do, d_loss, da if write_full else o_full, db if write_sparse else o_full,
            dg if write_gate else gate, R, T, H, D, (2.0 if squared else 1.0) / (R * D),
            *o_full.stride(), *o_sparse.stride(), *_gate_strides(gate), *do.stride(),
            *(da.stride() if write_full else (0,) * 4), *(db.stride() if write_sparse else (0,) * 4),
            OUT_FULL=out_full, HAS_DO=d_out is not None, ALIGN_A=align_full, ALIGN_B=align_sparse, SQUARED=squared,
            WRITE_A=write_full, WRITE_B=write_sparse, WRITE_G=write_gate, ROWS=rows, BLOCK_D=block_d,
            num_warps=NUM_WARPS,
        )
    return da, db, dg


@_gated_bwd_op.register_fake
def _(o_full, o_sparse, gate, d_out, d_loss, out_full, align_full, align_sparse, kind, write_full, write_sparse,
      write_gate):
    return _gradient_buffers(o_full, o_sparse, gate, write_full, write_sparse, write_gate)


def _gradient_buffers(o_full, o_sparse, gate, write_full: bool, write_sparse: bool, write_gate: bool):
    """Each stream's gradient in that stream's own layout (SDPA's output is a transposed view: its
    backward then reads dO laid out like its O); the gate's contiguous. Unwritten ones are empty
    (and are not returned to autograd)."""
    def grad(x, write):
        return torch.empty_like(x) if write else x.new_empty((0,))

    return grad(o_full, write_full), grad(o_sparse, write_sparse), (
        torch.empty(gate.shape, device=gate.device, dtype=gate.dtype) if write_gate else gate.new_empty((0,)))


def _gated_setup(ctx, inputs, output):
    o_full, o_sparse, gate, out_full, align_full, align_sparse, kind = inputs
    ctx.save_for_backward(o_full, o_sparse, gate)
    ctx.out_full, ctx.align_sides, ctx.kind = out_full, (align_full, align_sparse), kind


def _gated_backward(ctx, d_out, d_loss):
    o_full, o_sparse, gate = ctx.saved_tensors
    write = ctx.needs_input_grad[:3]
    align_full, align_sparse = ctx.align_sides
    if d_loss is None:
        d_loss = torch.zeros((), device=o_full.device, dtype=torch.float32)
    da, db, dg = _gated_bwd_op(o_full, o_sparse, gate, d_out, d_loss, ctx.out_full, align_full, align_sparse,
                               ctx.kind, *write)
    return (da if write[0] else None), (db if write[1] else None), (dg if write[2] else None), None, None, None, None


_gated_fwd_op.register_autograd(_gated_backward, setup_context=_gated_setup)

# Which gated product each direction's terms send gradient to (the other side is stop-gradient).
_ALIGN_SIDES = {"both": (True, True), "sparsity": (True, False), "commitment": (False, True)}


def gated_alignment(o_full, o_sparse, gate, mode: str, direction: str, kind: str):
    """Fused `reference.gated_alignment` (arguments validated by ssa.ops.api)."""
    if o_full.dtype not in KERNEL_DTYPES or direction == "none":
        return reference.gated_alignment(o_full, o_sparse, gate, mode, direction, kind)
    align_full, align_sparse = _ALIGN_SIDES[direction]
    # A stream that neither feeds the output nor receives an alignment term gets no gradient at all,
    # as in the reference (its attention backward is not run), so it enters detached.
    if mode != "full" and not align_full:
        o_full = o_full.detach()
    if mode != "sparse" and not align_sparse:
        o_sparse = o_sparse.detach()
    return _gated_fwd_op(o_full, o_sparse, gate, mode == "full", align_full, align_sparse, kind)
