"""The fused alignment-loss kernels against the reference: value, both gradients, errors, the model.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET).
Tensors are small; the multi-program cases use just over a few blocks of elements.
"""

from __future__ import annotations

import pytest
import torch

from ssa import ops
from ssa.ops import reference

pytest.importorskip("triton")
_align = pytest.importorskip("ssa.ops.triton._align")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DIRECTIONS = ("both", "sparsity", "commitment")
KINDS = ("smooth_l1", "l2")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# numel: odd and below one block; exactly two blocks; four programs with a ragged last one.
SHAPES = ((3, 5, 2, 7), (2, 64, 4, 16), (3, 4097))
GRAD_TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-9},
    # The gradients are rounded to half precision from float32 values that may differ in the last
    # float32 bit (order of the three products), which can move the rounding by one unit.
    torch.bfloat16: {"rtol": 1e-2, "atol": 1e-9},
    torch.float16: {"rtol": 1e-3, "atol": 1e-9},
}


def _pair(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Spread of about 1.6 in a - b: both branches of smooth L1 (|d| < 1 and >= 1) are exercised.
    a = 1.2 * torch.randn(shape, generator=g)
    b = torch.randn(shape, generator=g)
    return a.to(DEVICE, dtype), b.to(DEVICE, dtype)


def _run(fn, a, b, direction, kind, upstream):
    a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss = fn(a, b, direction, kind)
    loss.backward(upstream)
    return loss.detach(), a.grad, b.grad


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_fused_matches_reference(direction, kind, dtype, shape):
    a, b = _pair(shape, dtype, seed=len(shape))
    upstream = torch.tensor(-1.7 if direction == "commitment" else 0.37, device=DEVICE)
    got = _run(lambda *x: ops.alignment_loss(*x, backend="triton"), a, b, direction, kind, upstream)
    want = _run(reference.alignment_loss, a, b, direction, kind, upstream)
    assert got[0].dtype == torch.float32 and got[0].dim() == 0
    torch.testing.assert_close(got[0], want[0], rtol=2e-6, atol=0)
    for name, g, w in (("grad o_full", got[1], want[1]), ("grad o_sparse", got[2], want[2])):
        should_have = (direction != "commitment") if name == "grad o_full" else (direction != "sparsity")
        assert (g is not None) == should_have == (w is not None), name
        if g is not None:
            assert g.dtype == dtype and g.shape == a.shape
            assert g.abs().max() > 0, name
            torch.testing.assert_close(g, w, **GRAD_TOL[dtype], msg=name)
    if direction == "both":  # each input gets one term's gradient, with opposite signs
        assert torch.equal(got[1], -got[2])


def test_value_formula_and_determinism():
    a, b = _pair((5, 4097), torch.float32, seed=3)
    d = (a - b).double()
    smooth = torch.where(d.abs() < 1, 0.5 * d**2, d.abs() - 0.5).mean()
    first = ops.alignment_loss(a, b, "both", "smooth_l1", backend="triton")
    torch.testing.assert_close(first.double(), 2 * smooth, rtol=1e-6, atol=0)
    assert torch.equal(first, ops.alignment_loss(a, b, "both", "smooth_l1", backend="triton"))  # no atomics
    torch.testing.assert_close(ops.alignment_loss(a, b, "sparsity", "mse", backend="triton").double(),
                               (d**2).mean(), rtol=1e-6, atol=0)


def test_non_contiguous_inputs():
    a, b = _pair((2, 9, 3, 40), torch.bfloat16, seed=4)
    a, b = a.transpose(1, 2), b[..., ::2].repeat_interleave(2, -1).transpose(1, 2)
    assert not a.is_contiguous() and not b.is_contiguous()
    upstream = torch.tensor(2.5, device=DEVICE)
    got = _run(lambda *x: ops.alignment_loss(*x, backend="triton"), a, b, "both", "smooth_l1", upstream)
    want = _run(reference.alignment_loss, a, b, "both", "smooth_l1", upstream)
    torch.testing.assert_close(got[0], want[0], rtol=2e-6, atol=0)
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g, w, **GRAD_TOL[torch.bfloat16])


def test_empty_input_is_nan_with_empty_grads_like_the_reference():
    a, b = _pair((2, 0, 4, 8), torch.bfloat16)
    got = _run(lambda *x: ops.alignment_loss(*x, backend="triton"), a, b, "both", "l2", torch.tensor(1.0))
    want = _run(reference.alignment_loss, a, b, "both", "l2", torch.tensor(1.0))
    assert got[0].isnan() and want[0].isnan()
    assert got[1].shape == got[2].shape == a.shape


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_requires_grad_and_gradient_targets_follow_the_reference(direction):
    # With only one input requiring grad the loss may not require grad at all (e.g. "sparsity" with
    # a detached o_full): the fused op must then also refuse .backward(), as the reference does.
    a, b = _pair((4, 6), torch.float32, seed=5)
    for a_grad, b_grad in ((True, False), (False, True)):
        results = []
        for fn in (lambda *x: ops.alignment_loss(*x, backend="triton"), reference.alignment_loss):
            x, y = a.clone().requires_grad_(a_grad), b.clone().requires_grad_(b_grad)
            loss = fn(x, y, direction, "smooth_l1")
            if loss.requires_grad:
                loss.backward()
            results.append((loss.requires_grad, x.grad is None, y.grad is None))
        assert results[0] == results[1], (a_grad, b_grad)


def test_none_direction_and_float64_use_the_reference():
    a, b = _pair((3, 7), torch.float32)
    none = ops.alignment_loss(a.requires_grad_(), b, "none", "l2", backend="triton")
    assert none.item() == 0.0 and none.dtype == torch.float32 and not none.requires_grad
    a64, b64 = a.detach().double(), b.double()
    torch.testing.assert_close(ops.alignment_loss(a64, b64, "both", "l2", backend="triton"),
                               reference.alignment_loss(a64, b64, "both", "l2"))


def test_auto_backend_uses_the_reference_off_cuda(monkeypatch):
    def fail(*args):
        raise AssertionError("the fused kernels ran for a CPU tensor with backend='auto'")

    monkeypatch.setattr(_align, "alignment_loss", fail)
    a, b = _pair((3, 7), torch.float32)
    if not a.is_cuda:
        assert torch.equal(ops.alignment_loss(a, b), reference.alignment_loss(a, b, "both", "smooth_l1"))


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        (("x",), {}, TypeError, "o_full must be a torch.Tensor"),
        ((), {"direction": "full"}, ValueError, r"direction must be one of \('both', 'sparsity'"),
        ((), {"kind": "l1"}, ValueError, r"kind must be one of \('smooth_l1', 'l2', 'mse'\)"),
        ((), {"backend": "cuda"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_arguments_are_named(args, kwargs, error, match):
    a, b = _pair((2, 3), torch.float32)
    with pytest.raises(error, match=match):
        ops.alignment_loss(*(args or (a, b)), *((b,) if args else ()), **kwargs)


def test_mismatched_inputs_are_named():
    a, b = _pair((2, 3), torch.float32)
    with pytest.raises(ValueError, match=r"o_sparse must have the shape of o_full \(2, 3\), got \(3, 2\)"):
        ops.alignment_loss(a, b.t())
    with pytest.raises(TypeError, match="o_sparse has dtype torch.bfloat16 but o_full has torch.float32"):
        ops.alignment_loss(a, b.bfloat16())
    with pytest.raises(TypeError, match="o_full must be float16, bfloat16, float32 or float64"):
        ops.alignment_loss(a.long(), b)
    with pytest.raises(ValueError, match="o_sparse is on meta"):
        ops.alignment_loss(a, b.to("meta"))


def _tiny_model(backend, **overrides):
    # The tiny SSA model of test_model.py; the same seed gives the same weights for both backends.
    from ssa.model import SSAConfig, SSAForCausalLM

    config = {
        "method": "ssa", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "block_size": 4, "block_count": 2,
        "nsa_window": 8, "max_position_embeddings": 128, "backend": backend,
    }
    config.update(overrides)
    torch.manual_seed(0)
    return SSAForCausalLM(SSAConfig(**config)).to(DEVICE).train()


@pytest.mark.parametrize("direction,kind", [("both", "smooth_l1"), ("commitment", "l2")])
def test_model_training_loss_is_the_same_with_both_backends(direction, kind):
    # backend="triton" also moves selection and sparse attention to their kernels, tested elsewhere;
    # what this adds is the alignment inside a real training forward and backward.
    x = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    results = []
    for backend in ("torch", "triton"):
        model = _tiny_model(backend, align_direction=direction, align_loss=kind)
        out = model(x, labels=x, attention_mode="sparse")
        out.loss.backward()
        grad = model.model.layers[0].self_attn.q_proj.weight.grad
        results.append((out.loss.detach(), out.align_loss.detach(), grad))
    assert results[0][1] > 0
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
