"""The fused gate-and-align op against its composition: gate * o_mode and the alignment of the two
gated streams, values and the gradients of o_full, o_sparse and the gate.

Without a GPU the kernel runs under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET).
The interpreter rounds float32 -> bfloat16 by truncation where the GPU rounds to nearest, so the
bfloat16 output may differ from PyTorch's product by one unit in the last place there; float32 and
float16 outputs are checked bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from ssa import ops
from ssa.ops import reference

pytest.importorskip("triton")
pytest.importorskip("ssa.ops.triton._align")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BF16_EXACT = torch.cuda.is_available()  # see the module docstring
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=2e-3, atol=1e-5),
       torch.bfloat16: dict(rtol=2e-2, atol=1e-4)}


def _inputs(shape, dtype, seed=0):
    """o_full as SDPA returns it (a transposed view), o_sparse contiguous, the gate a slice of the
    model's [B, T, gates, H, 1] tensor; a spread wide enough for both smooth-L1 branches."""
    B, T, H, D = shape
    g = torch.Generator().manual_seed(seed)
    o_full = (1.5 * torch.randn(B, H, T, D, generator=g)).to(DEVICE, dtype).transpose(1, 2)
    o_sparse = torch.randn(B, T, H, D, generator=g).to(DEVICE, dtype)
    gate = torch.sigmoid(2 * torch.randn(B, T, 2, H, 1, generator=g)).to(DEVICE, dtype)[:, :, 1]
    upstream = torch.randn(B, T, H, D, generator=g).to(DEVICE, dtype)
    return o_full, o_sparse, gate, upstream


def _run(fn, inputs, mode, direction, kind, loss_weight=0.7, use_out=True):
    o_full, o_sparse, gate, upstream = inputs
    leaves = [x.detach().clone().requires_grad_() for x in (o_full, o_sparse, gate)]
    out, loss = fn(*leaves, mode, direction, kind)
    total = loss_weight * loss
    if use_out:
        total = total + (out.float() * upstream.float()).sum()
    total.backward()
    return out.detach(), loss.detach(), *(x.grad for x in leaves)


def _fused(*args):
    return ops.gated_alignment(*args, backend="triton")


def _check(got, want, dtype):
    names = ("output", "loss", "grad o_full", "grad o_sparse", "grad gate")
    for name, g, w in zip(names, got, want):
        assert (g is None) == (w is None), f"{name}: gradient presence differs from the reference"
        if g is None:
            continue
        assert g.dtype == w.dtype and g.shape == w.shape, name
        if name == "output" and (dtype != torch.bfloat16 or BF16_EXACT):
            assert torch.equal(g, w), "the gated output must equal gate * o bit for bit"
        else:
            torch.testing.assert_close(g, w, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("kind", ["smooth_l1", "l2"])
@pytest.mark.parametrize("direction", ["both", "sparsity", "commitment"])
@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_matches_the_composition_float32(mode, direction, kind):
    # 2 * 37 * 3 = 222 rows of an odd head dim (24): two programs, the last one ragged, masked lanes.
    inputs = _inputs((2, 37, 3, 24), torch.float32, seed=1)
    got, want = _run(_fused, inputs, mode, direction, kind), _run(reference.gated_alignment, inputs, mode, direction, kind)
    _check(got, want, torch.float32)
    assert want[1] > 0 and want[4].abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mode,direction", [("full", "both"), ("sparse", "sparsity")])
@pytest.mark.parametrize("shape", [(1, 9, 2, 64), (1, 5, 3, 7)], ids=["d64", "d7"])
def test_matches_the_composition_half(shape, mode, direction, dtype):
    # The output and loss against the half-precision composition; the gradients against the
    # composition in float64: the fused gradients (float32 inside, one rounding) must be at least
    # as close to it as the composition's own (rounded after every product and in the gate's sum).
    inputs = _inputs(shape, dtype, seed=2)
    got = _run(_fused, inputs, mode, direction, "smooth_l1")
    want = _run(reference.gated_alignment, inputs, mode, direction, "smooth_l1")
    _check(got[:2], want[:2], dtype)
    exact = _run(reference.gated_alignment, [x.double() for x in inputs], mode, direction, "smooth_l1")
    for name, g, w, e in zip(("grad o_full", "grad o_sparse", "grad gate"), got[2:], want[2:], exact[2:]):
        assert (g is None) == (w is None) == (e is None), name
        if g is None:
            continue
        assert g.dtype == dtype and g.shape == e.shape, name
        ulp = torch.finfo(dtype).eps * e.abs().max()
        assert (g.double() - e).abs().max() <= 1.5 * (w.double() - e).abs().max() + 2 * ulp, name


def test_stream_without_any_gradient_stays_out_of_the_graph():
    # sparsity + full mode: o_sparse is only read detached, so it gets no gradient (None), as unfused.
    o_full, o_sparse, gate, _ = _inputs((1, 4, 2, 8), torch.float32)
    o_full, o_sparse = o_full.detach().requires_grad_(), o_sparse.requires_grad_()
    out, loss = _fused(o_full, o_sparse, gate, "full", "sparsity", "l2")
    (out.sum() + loss).backward()
    assert o_sparse.grad is None and o_full.grad.abs().max() > 0


@pytest.mark.parametrize("use_out,loss_weight", [(False, 1.3), (True, 0.0)])
def test_one_output_unused(use_out, loss_weight):
    # Only the loss reaches backward, or only the output: the other's gradient is absent or zero.
    inputs = _inputs((1, 6, 2, 16), torch.float32, seed=3)
    _check(_run(_fused, inputs, "sparse", "both", "smooth_l1", loss_weight, use_out),
           _run(reference.gated_alignment, inputs, "sparse", "both", "smooth_l1", loss_weight, use_out), torch.float32)


def test_value_by_formula():
    o_full, o_sparse, gate, _ = _inputs((2, 5, 2, 8), torch.float32, seed=4)
    out, loss = _fused(o_full, o_sparse, gate, "full", "both", "l2")
    d = (gate * o_full - gate * o_sparse).double()
    torch.testing.assert_close(loss.double(), 2 * (d ** 2).mean(), rtol=1e-6, atol=0)
    assert out.is_contiguous() and torch.equal(out, gate * o_full)


def test_stream_gradients_keep_their_stream_layout():
    # o_full is SDPA's transposed view: its gradient comes back with the same strides (and values).
    inputs = _inputs((2, 6, 3, 8), torch.float32, seed=6)
    got = _run(_fused, inputs, "full", "both", "smooth_l1")
    assert got[2].stride() == inputs[0].stride() and got[3].stride() == inputs[1].stride()
    _check(got, _run(reference.gated_alignment, inputs, "full", "both", "smooth_l1"), torch.float32)


def test_empty_input_gives_nan_like_the_reference():
    o_full, o_sparse, gate, _ = _inputs((1, 0, 2, 8), torch.float32)
    out, loss = _fused(o_full, o_sparse, gate, "sparse", "both", "smooth_l1")
    assert out.shape == (1, 0, 2, 8) and torch.isnan(loss)
    assert torch.isnan(reference.gated_alignment(o_full, o_sparse, gate, "sparse", "both", "smooth_l1")[1])


@pytest.mark.parametrize("change,error,match", [
    (dict(gate=lambda g: g[..., 0]), ValueError, r"gate \[B, T, H, 1\]"),
    (dict(gate=lambda g: g.double()), TypeError, "gate .* must share dtype"),
    (dict(mode="both"), ValueError, "mode must be 'full' or 'sparse'"),
    (dict(direction="up"), ValueError, "direction must be one of"),
    (dict(o_sparse=lambda o: o[:, :3]), ValueError, "o_sparse must have the shape"),
])
def test_bad_arguments_are_named(change, error, match):
    o_full, o_sparse, gate, _ = _inputs((1, 4, 2, 8), torch.float32)
    args = dict(o_full=o_full, o_sparse=o_sparse, gate=gate, mode="full", direction="both")
    for key, value in change.items():
        args[key] = value(args[key]) if callable(value) else value
    with pytest.raises(error, match=match):
        ops.gated_alignment(**args)


@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_model_training_step_is_the_same_with_the_fused_op(mode, monkeypatch):
    # The model's SSA training forward (gated alignment) with the fused op and with the composition.
    from ssa.model import SSAConfig, SSAForCausalLM
    from ssa.ops import triton as triton_ops

    cfg = SSAConfig(method="ssa", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, block_size=4, block_count=2, max_position_embeddings=64, backend="torch")
    x = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    results = []
    for fused in (False, True):
        if fused:  # only this op goes to its kernel; attention stays on the reference
            monkeypatch.setattr(reference, "gated_alignment", triton_ops.gated_alignment)
        torch.manual_seed(0)
        model = SSAForCausalLM(cfg).to(DEVICE).train()
        out = model(x, labels=x, attention_mode=mode)
        out.loss.backward()
        attn = model.model.layers[0].self_attn
        results.append((out.loss.detach(), out.align_loss.detach(), attn.g_proj.weight.grad, attn.q_proj.weight.grad))
    assert results[0][1] > 0
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_registered_op_passes_opcheck_and_compiles():
    # A torch.library custom op with a fake kernel: torch.compile (train.compile) keeps it one node.
    from ssa.ops import triton as triton_ops
    from ssa.ops.triton import _align

    o_full, o_sparse, gate, upstream = _inputs((1, 8, 2, 16), torch.float32, seed=5)
    leaves = [x.detach().clone().requires_grad_() for x in (o_full, o_sparse, gate)]
    torch.library.opcheck(_align._gated_fwd_op, (*leaves, False, True, True, "smooth_l1"))

    def step(a, b, g):
        out, loss = triton_ops.gated_alignment(a, b, g, "sparse", "both", "smooth_l1")
        return (out * upstream).sum() + loss

    results = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="inductor" if DEVICE == "cuda" else "aot_eager")):
        xs = [x.detach().clone().requires_grad_() for x in leaves]
        value = fn(*xs)
        value.backward()
        results.append([value.detach()] + [x.grad for x in xs])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_api_ops_trace_whole_once_compile_is_applied():
    # ssa.ops.api finds the Triton kernels through an import that dynamo cannot trace; apply_compile
    # (train.compile) makes that lookup first, so a compiled block's graph holds the ops unbroken.
    from ssa.ops import api
    from ssa.training.distributed import apply_compile

    api._TRITON.clear()
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList()
    apply_compile(model, backend="aot_eager")
    o_full, o_sparse, gate, upstream = _inputs((1, 8, 2, 16), torch.float32, seed=7)

    def step(a, b, g):
        out, loss = ops.gated_alignment(a, b, g, "full", "both", "l2", backend="triton")
        return (out * upstream).sum() + loss

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # raises on a graph break
    torch.testing.assert_close(compiled(o_full, o_sparse, gate), step(o_full, o_sparse, gate), rtol=1e-6, atol=1e-6)
