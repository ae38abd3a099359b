"""Layer-level checks of the SSA objective and the gated attention (docs/design.md §1.2-1.3).

Every expectation is recomputed from the public ops and the layer's own weights, on the stream each
layer actually received (captured with a forward hook), so they hold for any number of layers.
"""

import pytest
import torch
import torch.nn.functional as F

from ssa import ops
from ssa.model import SSAConfig, SSAForCausalLM
from ssa.model.modeling import apply_rope


def tiny_model(seed=0, **overrides):
    base = dict(
        method="ssa", vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, block_size=4, block_count=2, max_position_embeddings=128,
    )
    base.update(overrides)
    torch.manual_seed(seed)
    return SSAForCausalLM(SSAConfig(**base))


def capture_attention_inputs(model):
    """Hooks recording the (normalised) input each layer's attention receives."""
    seen = []
    handles = [
        layer.self_attn.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
        for layer in model.model.layers
    ]
    return seen, handles


def streams(attn, h):
    """(gate, full attention, sparse attention) of one layer from its weights, via the public ops."""
    B, T, _ = h.shape
    cfg = attn.config
    pos = torch.arange(T)[None].expand(B, T)
    cos, sin = attn_rotary(cfg)(pos)
    q = apply_rope(attn.q_proj(h).view(B, T, cfg.num_attention_heads, cfg.head_dim), cos, sin)
    k = apply_rope(attn.k_proj(h).view(B, T, cfg.num_key_value_heads, cfg.head_dim), cos, sin)
    v = attn.v_proj(h).view(B, T, cfg.num_key_value_heads, cfg.head_dim)
    gate = torch.sigmoid(attn.g_proj(h))[..., None]  # one gate per head: [B, T, H, 1]
    full = ops.full_attention(q, k, v)
    sparse = ops.block_sparse_attention(q, k, v, block_size=cfg.block_size, block_count=cfg.block_count)
    return gate, full, sparse


def attn_rotary(cfg):
    from ssa.model.rope import RotaryEmbedding

    return RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_llama3_scaling)


@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_align_loss_is_the_mean_of_the_per_layer_terms(mode):
    model = tiny_model(num_hidden_layers=3).train()
    x = torch.randint(0, 64, (2, 23), generator=torch.Generator().manual_seed(1))
    seen, handles = capture_attention_inputs(model)
    out = model(x, labels=x, attention_mode=mode)
    for h in handles:
        h.remove()
    assert len(seen) == 3
    terms = []
    with torch.no_grad():
        for layer, h in zip(model.model.layers, seen):
            gate, full, sparse = streams(layer.self_attn, h)
            terms.append(2 * F.smooth_l1_loss(gate * full, gate * sparse))  # sparsity + commitment
    terms = torch.stack(terms)
    assert terms.min() > 0 and (terms.max() - terms.min()) > 1e-3 * terms.max()  # distinct, nonzero terms
    torch.testing.assert_close(out.align_loss.detach(), terms.mean(), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(out.loss.detach(), out.ce_loss.detach() + model.config.alpha * terms.mean(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_layer_output_is_o_proj_of_the_gated_stream(mode, training):
    # The stream that feeds the residual is gate * attention of the chosen mode, through o_proj,
    # added to the layer input; then the MLP on top. Training computes both streams (alignment), so
    # this also checks that the chosen one, gated, is what is propagated.
    model = tiny_model(num_hidden_layers=2)
    model.train(training)
    x = torch.randint(0, 64, (2, 19), generator=torch.Generator().manual_seed(2))
    layer_io = []
    handles = [layer.register_forward_hook(lambda mod, args, out: layer_io.append((args[0].detach(), out[0].detach())))
               for layer in model.model.layers]
    seen, more = capture_attention_inputs(model)
    with torch.set_grad_enabled(training):
        model(x, labels=x if training else None, attention_mode=mode)
    for h in handles + more:
        h.remove()
    with torch.no_grad():
        for layer, (inp, got), h in zip(model.model.layers, layer_io, seen):
            torch.testing.assert_close(h, layer.input_layernorm(inp))
            gate, full, sparse = streams(layer.self_attn, h)
            chosen = full if mode == "full" else sparse
            attn_out = layer.self_attn.o_proj((gate * chosen).flatten(2))
            mid = inp + attn_out
            expected = mid + layer.mlp(layer.post_attention_layernorm(mid))
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
            # The check can tell the gated stream from the ungated one.
            ungated = inp + layer.self_attn.o_proj(chosen.flatten(2))
            assert (ungated - mid).abs().max() > 1e-3


def test_a_call_that_raises_leaves_the_cache_unchanged():
    model = tiny_model(num_hidden_layers=2).eval()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cache = model(ids[:, :10], use_cache=True).past_key_values
        assert cache.get_seq_length() == 10 and cache.host_lengths == [10, 10]
        bad_calls = [
            dict(labels=ids[:, 10:11], logits_to_keep=1),  # the loss needs every position
            dict(labels=ids[:, :2]),  # labels not shaped like input_ids
            dict(logits_to_keep=-1),
            dict(logits_to_keep=1.5),
        ]
        for kwargs in bad_calls:
            with pytest.raises(ValueError, match="logits_to_keep|labels"):
                model(ids[:, 10:11], past_key_values=cache, **kwargs)
            assert cache.get_seq_length() == 10 and cache.host_lengths == [10, 10], kwargs
        # The cache still continues the prompt exactly: the next token's logits equal a fresh pass.
        step = model(ids[:, 10:11], past_key_values=cache).logits[:, -1]
        ref = model(ids[:, :11]).logits[:, -1]
    torch.testing.assert_close(step, ref, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == 11
