"""The model and the SSA objective (docs/design.md §1.2-1.4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssa import ops
from ssa.model import SSAConfig, SSAForCausalLM
from ssa.model import modeling
from ssa.model.objective import alignment_loss
from ssa.model.rope import rope_inverse_frequencies


def tiny_config(**overrides):
    base = dict(
        method="ssa", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, block_size=4, block_count=2, nsa_window=8, max_position_embeddings=128,
    )
    base.update(overrides)
    return SSAConfig(**base)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return SSAForCausalLM(tiny_config(**overrides))


def tokens(B=2, T=40, seed=0):
    return torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(seed))


class StreamSpy:
    """Wraps the attention ops used by the model to count calls and capture stream gradients."""

    def __init__(self, monkeypatch):
        self.calls = {"full": 0, "sparse": 0}
        self.grads = {"full": [], "sparse": []}
        for name, stream in (("full_attention", "full"), ("block_sparse_attention", "sparse")):
            original = getattr(ops, name)
            monkeypatch.setattr(modeling.ops, name, self._wrap(original, stream))

    def _wrap(self, fn, stream):
        def wrapped(*args, **kwargs):
            self.calls[stream] += 1
            out = fn(*args, **kwargs)
            if out.requires_grad:
                out.register_hook(lambda g: self.grads[stream].append(g.abs().sum().item()))
            return out

        return wrapped


def test_full_never_runs_sparse_stream_and_moba_never_runs_full(monkeypatch):
    spy = StreamSpy(monkeypatch)
    x = tokens()
    tiny_model(method="full").train()(x, labels=x).loss.backward()
    assert spy.calls == {"full": 2, "sparse": 0}
    spy.calls.update(full=0, sparse=0)
    tiny_model(method="moba").train()(x, labels=x).loss.backward()
    assert spy.calls == {"full": 0, "sparse": 2}


def test_ssa_training_computes_both_streams_in_every_layer(monkeypatch):
    spy = StreamSpy(monkeypatch)
    x = tokens()
    out = tiny_model().train()(x, labels=x)
    assert spy.calls == {"full": 2, "sparse": 2}
    assert out.align_loss > 0
    torch.testing.assert_close(out.loss, out.ce_loss + 10.0 * out.align_loss)


@pytest.mark.parametrize(
    "direction,expect_full,expect_sparse",
    [("sparsity", True, False), ("commitment", False, True), ("both", True, True)],
)
def test_alignment_terms_send_gradient_only_where_designed(monkeypatch, direction, expect_full, expect_sparse):
    # One layer: with more, a later layer's commitment term legitimately reaches an earlier layer's
    # residual stream through its inputs.
    spy = StreamSpy(monkeypatch)
    x = tokens()
    model = tiny_model(align_direction=direction, num_hidden_layers=1).train()
    model(x, labels=x, attention_mode="full").align_loss.backward()  # the alignment alone
    got_full = sum(spy.grads["full"]) > 0
    got_sparse = sum(spy.grads["sparse"]) > 0
    assert (got_full, got_sparse) == (expect_full, expect_sparse)


def test_alignment_loss_definition():
    a = torch.randn(3, 5, requires_grad=True)
    b = torch.randn(3, 5, requires_grad=True)
    loss = alignment_loss(a, b, "both", "smooth_l1")
    diff = (a - b).abs()
    expected = 2 * torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # d/da of the sparsity term equals d/db of the commitment term with the sign flipped.
    torch.testing.assert_close(a.grad, -b.grad)
    l2 = alignment_loss(a.detach(), b.detach(), "sparsity", "l2")
    torch.testing.assert_close(l2, ((a - b) ** 2).mean().detach())
    assert alignment_loss(a, b, "none", "l2").item() == 0.0


def test_align_loss_is_layer_mean_of_independently_computed_terms():
    # One layer, recomputed from the public ops: g * attention for both streams, SmoothL1 both ways.
    model = tiny_model(num_hidden_layers=1).train()
    x = tokens(T=33)
    out = model(x, labels=x, attention_mode="sparse")
    attn = model.model.layers[0].self_attn
    h = model.model.layers[0].input_layernorm(model.model.embed_tokens(x))
    cos, sin = model.model.rotary(torch.arange(33)[None].expand(2, 33))
    q = modeling.apply_rope(attn.q_proj(h).view(2, 33, 4, 8), cos, sin)
    k = modeling.apply_rope(attn.k_proj(h).view(2, 33, 2, 8), cos, sin)
    v = attn.v_proj(h).view(2, 33, 2, 8)
    g = torch.sigmoid(attn.g_proj(h))[..., None]
    full = g * ops.full_attention(q, k, v)
    sparse = g * ops.block_sparse_attention(q, k, v, block_size=4, block_count=2)
    expected = 2 * F.smooth_l1_loss(full, sparse)
    torch.testing.assert_close(out.align_loss, expected, rtol=1e-5, atol=1e-7)

    pre_gate = tiny_model(num_hidden_layers=1, align_on="pre_gate").train()
    pre_gate.load_state_dict(model.state_dict())
    raw = 2 * F.smooth_l1_loss(full / g, sparse / g)
    torch.testing.assert_close(pre_gate(x, labels=x, attention_mode="sparse").align_loss, raw, rtol=1e-4, atol=1e-7)


def test_mode_draw_is_shared_by_all_layers():
    # A training forward in a drawn mode must equal an inference forward in that mode: every layer
    # fed its residual from the same stream.
    model = tiny_model(num_hidden_layers=3)
    x = tokens()
    for seed in range(6):
        torch.manual_seed(seed)
        model.train()
        out = model(x, labels=x)
        model.eval()
        with torch.no_grad():
            ref = model(x, attention_mode=out.attention_mode)
        # A call with labels returns no logits: compare its loss with the loss of the reference logits.
        ref_ce = torch.nn.functional.cross_entropy(ref.logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
        torch.testing.assert_close(out.ce_loss, ref_ce)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_full_ratio_sets_the_draw_probability(ratio):
    model = tiny_model(full_ratio=ratio, num_hidden_layers=1).train()
    torch.manual_seed(0)
    n = 2000
    plans = [model.plan() for _ in range(n)]  # the per-forward decision, without running the layers
    assert all(p.streams == ("full", "sparse") and p.align for p in plans)
    fulls = sum(p.mode == "full" for p in plans)
    sd = math.sqrt(n * ratio * (1 - ratio))
    assert abs(fulls - n * ratio) <= 4 * sd + 1e-9


def test_inference_overrides_mode_and_budget():
    model = tiny_model().eval()
    x = tokens(T=40)
    with torch.no_grad():
        assert model(x).attention_mode == "sparse"
        full = model(x, attention_mode="full").logits
        narrow = model(x, attention_mode="sparse", block_count=1).logits
        wide = model(x, attention_mode="sparse", block_count=10).logits  # 10 blocks of 4 cover 40 tokens
    torch.testing.assert_close(wide, full, rtol=1e-5, atol=1e-5)
    assert (narrow - full).abs().max() > 1e-3
    assert tiny_model(method="full").eval()(x).attention_mode == "full"


def test_nsa_runs_three_gated_branches_and_refuses_full():
    model = tiny_model(method="nsa")
    assert model.model.layers[0].self_attn.g_proj.out_features == 3 * 4
    x = tokens()
    out = model.train()(x, labels=x)
    out.loss.backward()
    assert out.align_loss.item() == 0.0
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="attention_mode"):
        model.eval()(x, attention_mode="full")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="dense"), "method"),
        (dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads"),
        (dict(block_size=0), "block_size"),
        (dict(block_count=0), "block_count"),
        (dict(full_ratio=1.5), "full_ratio"),
        (dict(align_direction="forward"), "align_direction"),
        (dict(align_loss="l1"), "align_loss"),
        (dict(attention_mode="dense"), "attention_mode"),
        (dict(rope_llama3_scaling={"rope_type": "yarn", "factor": 2}), "rope_type"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)


def test_forward_rejects_bad_call_arguments():
    model = tiny_model().eval()
    x = tokens()
    with pytest.raises(ValueError, match="attention_mode"):
        model(x, attention_mode="dense")
    with pytest.raises(ValueError, match="block_count"):
        model(x, block_count=0)
    with pytest.raises(ValueError, match="block_size"):
        model(x, block_size=-4)


def test_llama3_rope_scaling_keeps_high_and_slows_low_frequencies():
    base = rope_inverse_frequencies(64, 500000.0, None)
    scaled = rope_inverse_frequencies(
        64, 500000.0, {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 512,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    )
    wavelength = 2 * math.pi / base
    short, long = wavelength < 512 / 4, wavelength > 512
    torch.testing.assert_close(scaled[short], base[short])
    torch.testing.assert_close(scaled[long], base[long] / 8)
    middle = ~short & ~long
    assert ((scaled[middle] < base[middle]) & (scaled[middle] > base[middle] / 8)).all()


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(method="nsa").eval()
    model.save_pretrained(tmp_path)
    loaded = SSAForCausalLM.from_pretrained(tmp_path).eval()
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)
    assert loaded.config.method == "nsa"
