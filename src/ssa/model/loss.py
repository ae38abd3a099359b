"""Next-token cross-entropy of the LM head without the logits of the whole batch.

`F.cross_entropy(F.linear(h, W).float(), y)` holds the float32 logits [tokens, vocab] and their
gradient at once: at 16 x 2048 tokens and a 50k vocabulary that is 6.6 GB each. Here the rows are
taken in chunks; each chunk's logits live only inside the loop. Because the loss is a scalar, the
gradients of the hidden states and of the head weight are computed in the same pass (chunk by
chunk) and kept; backward only scales them by the incoming gradient. Forward therefore costs the
three matmuls a normal forward + backward would, and never more than one chunk of logits.

Padded vocabulary: rows of the head beyond `vocab_size` (added so the matmul's N is a multiple of
64) take part in the matmuls, whose dimensions then stay multiples of 64 (a slice to `vocab_size`
rows would send all three onto slow unaligned GEMM kernels), and their logits are set to -inf before
the softmax, so padded ids get no probability mass and no gradient.
"""

from __future__ import annotations

import functools

import torch

IGNORE_INDEX = -100
# Elements of one logits chunk (rows * vocab). Eager: 2**26 (256 MiB per float32 temporary, of which
# the chunk's math holds a few). Compiled, the float32 temporaries are fused away and the chunk holds
# only its logits and gradient in the autocast dtype (1 GiB at 2**28): fewer, larger chunks cut the
# per-chunk host work and the float32 head-gradient accumulations.
CHUNK_ELEMENTS = 2 ** 26
COMPILED_CHUNK_ELEMENTS = 2 ** 28


def chunk_step(h, weight, y, n_valid, vocab_size: int, need_grad: bool):
    """One chunk of rows: (sum of its CE terms, d loss / d logits in h's dtype or None).

    Pure and out-of-place, so that `torch.compile` can fuse the float32 upcast, the padded-id mask,
    the log-sum-exp and the gradient into a reduction and one elementwise pass over the logits
    (eager PyTorch reads and writes the chunk's logits about eight times)."""
    acc = torch.promote_types(h.dtype, torch.float32)  # softmax and sums: float32 at least
    logits = (h @ weight.t()).to(acc)
    ids = torch.arange(weight.shape[0], device=h.device)
    if vocab_size < weight.shape[0]:
        logits = logits.masked_fill(ids >= vocab_size, float("-inf"))
    valid = y != IGNORE_INDEX
    y_safe = torch.where(valid, y, 0)
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, y_safe[:, None]).squeeze(1)
    total = ((lse - picked) * valid).sum()
    if not need_grad:
        return total, None
    # d loss / d logits = softmax - onehot, for valid rows, divided by the valid count.
    onehot = (ids[None, :] == y_safe[:, None]).to(acc)
    grad = (torch.exp(logits - lse[:, None]) - onehot) * (valid.to(acc) / n_valid)[:, None]
    return total, grad.to(h.dtype)


@functools.cache
def compiled_chunk_step(backend: str):
    """`chunk_step` under `torch.compile(backend=backend)`, built once per backend."""
    return torch.compile(chunk_step, backend=backend, dynamic=False)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size: int, chunk_rows: int, step):
        ctx.weight_dtype = weight.dtype
        # A tensor, not a Python int: reading it would make the host wait for the GPU every step.
        n_valid = (targets != IGNORE_INDEX).sum().clamp_min(1)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else None
        acc = torch.promote_types(hidden.dtype, torch.float32)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        total = hidden.new_zeros((), dtype=acc)
        for r0 in range(0, hidden.shape[0], chunk_rows):
            h = hidden[r0:r0 + chunk_rows]
            part, grad = step(h, weight, targets[r0:r0 + chunk_rows], n_valid, vocab_size, need_h or need_w)
            total += part
            if need_h:
                grad_h[r0:r0 + chunk_rows] = grad @ weight
            if need_w:
                grad_w += (grad.t() @ h).to(acc)
        ctx.save_for_backward(grad_h, grad_w)
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        dh = None if grad_h is None else grad_h * grad_out.to(grad_h.dtype)
        dw = None if grad_w is None else (grad_w * grad_out).to(ctx.weight_dtype)
        return dh, dw, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         vocab_size: int | None = None, chunk_rows: int | None = None,
                         compile_backend: str | None = None) -> torch.Tensor:
    """Mean CE of `targets` under logits `hidden @ weight[:vocab_size].T`, float32, chunked.

    hidden [N, H], weight [V_padded, H], targets [N] int (IGNORE_INDEX rows are skipped). Under
    autocast the matmuls run in the autocast dtype, as `F.linear` would; softmax is float32.
    `compile_backend`: run each chunk's math under `torch.compile` with that backend (None: eager).
    """
    vocab_size = weight.shape[0] if vocab_size is None else vocab_size
    if not 1 <= vocab_size <= weight.shape[0]:
        raise ValueError(f"vocab_size must be in [1, {weight.shape[0]}], got {vocab_size}")
    if hidden.ndim != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, H] and targets [N]; got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    if chunk_rows is None:
        chunk_rows = max(1, (CHUNK_ELEMENTS if compile_backend is None else COMPILED_CHUNK_ELEMENTS) // vocab_size)
    with torch.autocast(dev, enabled=False):
        step = chunk_step if compile_backend is None else compiled_chunk_step(compile_backend)
        return _LinearCrossEntropy.apply(hidden, weight, targets, vocab_size, chunk_rows, step)
