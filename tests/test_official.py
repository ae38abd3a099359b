"""Conversion of the paper's released checkpoints (`ssa convert --from-official`).

The fixture writes a random checkpoint in the released layout: the parameter names and shapes of
their `LlamaNSAForCausalLM` (a `g_proj` of [3 * heads, hidden] read as [..., heads, 3]) and the keys
of their config.json. The converted model is checked against a plain-torch re-implementation of
their forward pass written here from that layout (RMSNorm, half-split RoPE, GQA causal attention
gated by the selection gate, SwiGLU), against the gate layout directly, and in sparse mode.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ssa import ops
from ssa.cli import main
from ssa.model import SSAForCausalLM
from ssa.model.rope import apply_rope

V, HIDDEN, INTER, LAYERS, H, HK, HD = 96, 48, 80, 2, 4, 2, 12


def official_config(window_size=0, **extra):
    """The keys of their released config.json, at a tiny size."""
    cfg = {
        "architectures": ["LlamaNSAForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": 2, "head_dim": HD, "hidden_act": "silu", "hidden_size": HIDDEN,
        "initializer_range": 0.02, "intermediate_size": INTER, "max_position_embeddings": 512, "mlp_bias": False,
        "model_type": "llama-nsa", "num_attention_heads": H, "num_hidden_layers": LAYERS, "num_key_value_heads": HK,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 500000.0,
        "tie_word_embeddings": True, "torch_dtype": "float32", "transformers_version": "4.54.0", "use_cache": True,
        "vocab_size": V, "block_size": 4, "block_counts": 3, "window_size": window_size,
        "auto_map": {"AutoConfig": "configuration_llama_nsa.LlamaNSAConfig",
                     "AutoModelForCausalLM": "modeling_llama_nsa.LlamaNSAForCausalLM"},
    }
    cfg.update(extra)
    return cfg


def official_weights(cfg, seed=0):
    """Random tensors under their parameter names, with their shapes."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    hidden, heads, kv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    w = {"model.embed_tokens.weight": rand(cfg["vocab_size"], hidden, scale=1.0),
         "model.norm.weight": 1 + rand(hidden)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rand(heads * hd, hidden)
        w[p + "self_attn.k_proj.weight"] = rand(kv * hd, hidden)
        w[p + "self_attn.v_proj.weight"] = rand(kv * hd, hidden)
        w[p + "self_attn.o_proj.weight"] = rand(hidden, heads * hd)
        w[p + "self_attn.g_proj.weight"] = rand(heads * 3, hidden, scale=0.5)
        w[p + "mlp.gate_proj.weight"] = rand(cfg["intermediate_size"], hidden)
        w[p + "mlp.up_proj.weight"] = rand(cfg["intermediate_size"], hidden)
        w[p + "mlp.down_proj.weight"] = rand(hidden, cfg["intermediate_size"])
        w[p + "input_layernorm.weight"] = 1 + rand(hidden)
        w[p + "post_attention_layernorm.weight"] = 1 + rand(hidden)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = rand(cfg["vocab_size"], hidden)
    return w


def write_official(path, cfg, weights, tokenizer=True):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer:
        (path / "tokenizer.json").write_text('{"model": "only copied"}')
        (path / "tokenizer_config.json").write_text("{}")
    return path


def convert(tmp_path, method, cfg=None, weights=None, extra=()):
    cfg = cfg or official_config(window_size=8 if method == "nsa" else 0)
    weights = weights or official_weights(cfg)
    src = write_official(tmp_path / f"official-{method}", cfg, weights)
    out = tmp_path / f"ssa-{method}"
    assert main(["convert", "--from-official", str(src), "--method", method, "--out", str(out), *extra]) == 0
    return SSAForCausalLM.from_pretrained(out).eval(), cfg, weights, out


# ---------------------------------------------------------------- their forward, re-implemented

def rms(x, w, eps):
    return w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps))


def official_full_forward(ids, cfg, w):
    """Full-attention logits of their model: every attention head output times its selection gate."""
    B, T = ids.shape
    heads, kv, hd, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    inv_freq = 1.0 / cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()  # [T, hd]

    def rope(x):  # x [B, heads, T, hd]
        half = hd // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    x = w["model.embed_tokens.weight"][ids]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"], eps)
        q = rope((h @ w[p + "self_attn.q_proj.weight"].T).view(B, T, heads, hd).transpose(1, 2))
        k = rope((h @ w[p + "self_attn.k_proj.weight"].T).view(B, T, kv, hd).transpose(1, 2))
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(B, T, kv, hd).transpose(1, 2)
        k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        attn = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v  # [B, heads, T, hd]
        g_cmp, g_slc, g_swa = (h @ w[p + "self_attn.g_proj.weight"].T).view(B, T, heads, 3).sigmoid().unbind(-1)
        o = attn.transpose(1, 2) * g_slc[..., None]
        x = x + o.reshape(B, T, -1) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        mlp = F.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
        x = x + mlp @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("method,tie", [("ssa", True), ("full", False), ("moba", True)])
def test_full_mode_logits_equal_their_forward(tmp_path, method, tie):
    cfg = official_config(tie_word_embeddings=tie, inference_mode="sparse" if method == "ssa" else None)
    if method != "ssa":
        del cfg["inference_mode"]
    model, cfg, w, out = convert(tmp_path, method, cfg=cfg)
    c = model.config
    assert (c.method, c.block_size, c.block_count, c.tie_word_embeddings, c.rms_norm_eps) == (method, 4, 3, tie, 1e-5)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size) == (H, HK, HD, INTER)
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    ids = torch.randint(0, V, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(ids, attention_mode="full").logits
        # a budget that covers every block is full attention again: the sparse path maps the same weights
        wide = model(ids, attention_mode="sparse", block_count=5).logits
        narrow = model(ids, attention_mode="sparse").logits
    want = official_full_forward(ids, cfg, w)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(wide, want, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(narrow).all() and (narrow - want).abs().max() > 1e-3  # the default budget is sparse
    default_mode = {"ssa": "sparse", "full": "full", "moba": "sparse"}[method]
    assert model(ids).attention_mode == default_mode


@pytest.mark.parametrize("method", ["ssa", "nsa"])
def test_gates_are_their_gate_rows(tmp_path, method):
    model, cfg, w, _ = convert(tmp_path, method)
    x = torch.randn(3, 5, HIDDEN, generator=torch.Generator().manual_seed(2))
    for i, layer in enumerate(model.model.layers):
        theirs = (x @ w[f"model.layers.{i}.self_attn.g_proj.weight"].T).view(3, 5, H, 3).sigmoid()  # [..., H, 3]
        ours = torch.sigmoid(layer.self_attn.g_proj(x))
        if method == "nsa":  # ours [..., branch, head]: compression, selection, window
            torch.testing.assert_close(ours.view(3, 5, 3, H), theirs.permute(0, 1, 3, 2))
        else:  # one gate per head: the selection gate
            torch.testing.assert_close(ours, theirs[..., 1])


def test_nsa_layer_mixes_its_three_branches_with_their_gates(tmp_path):
    model, cfg, w, _ = convert(tmp_path, "nsa")
    assert (model.config.nsa_window, model.config.block_size, model.config.block_count) == (8, 4, 3)
    ids = torch.randint(0, V, (1, 21), generator=torch.Generator().manual_seed(3))
    seen = []
    attn0 = model.model.layers[0].self_attn
    handle = attn0.register_forward_hook(lambda m, args, out: seen.append((args[0], out[0])))
    with torch.no_grad():
        logits = model(ids).logits
        handle.remove()
        h, got = seen[0]
        # q, k, v, gates and o_proj straight from their tensors; the branches from the public ops
        B, T, _ = h.shape
        p = "model.layers.0.self_attn."
        cos, sin = model.model.rotary(torch.arange(T)[None])
        q = apply_rope((h @ w[p + "q_proj.weight"].T).view(B, T, H, HD), cos, sin)
        k = apply_rope((h @ w[p + "k_proj.weight"].T).view(B, T, HK, HD), cos, sin)
        v = (h @ w[p + "v_proj.weight"].T).view(B, T, HK, HD)
        g_cmp, g_slc, g_swa = (h @ w[p + "g_proj.weight"].T).view(B, T, H, 3).sigmoid().unbind(-1)
        branches = (ops.compressed_attention(q, k, v, 4), ops.block_sparse_attention(q, k, v, block_size=4, block_count=3),
                    ops.sliding_window_attention(q, k, v, 8))
        mixed = sum(g[..., None] * o for g, o in zip((g_cmp, g_slc, g_swa), branches))
        want = mixed.reshape(B, T, -1) @ w[p + "o_proj.weight"].T
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(logits).all()


def _cli_error(tmp_path, capsys, args):
    capsys.readouterr()
    rc = main(["convert", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert not (tmp_path / "out").exists()  # nothing written on failure
    return err


def _with(cfg_changes=None, drop=None, add=None, reshape=None, method="ssa", window=0):
    def build(tmp_path):
        cfg = official_config(window_size=window)
        cfg.update(cfg_changes or {})
        w = official_weights(official_config())
        if drop:
            del w[drop]
        if add:
            w[add] = torch.zeros(3)
        if reshape:
            w[reshape] = w[reshape][:-1]
        src = write_official(tmp_path / "src", cfg, w)
        return ["--from-official", str(src)] + (["--method", method] if method else [])
    return build


@pytest.mark.parametrize("build,message", [
    (_with(method=None), "needs --method"),
    (_with(method="dense"), "--method must be one of"),
    (_with(method="nsa", window=0), "window_size >= 1"),
    (_with({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}), "not an official SSA checkpoint"),
    (_with({"sliding_window_stride": 4}), "unknown config keys ['sliding_window_stride']"),
    (_with({"attention_bias": True}), "attention_bias=True cannot be mapped"),
    (_with({"hidden_act": "gelu"}), "hidden_act='gelu' cannot be mapped"),
    (_with({"block_counts": 0}), "block_counts must be an int >= 1"),
    (_with(drop="model.layers.1.mlp.up_proj.weight"), "missing weights ['model.layers.1.mlp.up_proj.weight']"),
    (_with(add="model.layers.0.self_attn.q_norm.weight"), "unexpected ['model.layers.0.self_attn.q_norm.weight']"),
    (_with(reshape="model.layers.0.self_attn.g_proj.weight"), "g_proj.weight has shape (11, 48)"),
    (_with(reshape="model.layers.1.self_attn.k_proj.weight"), "k_proj.weight has shape (23, 48)"),
    (_with({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}), "RoPE scaling 'yarn'"),
])
def test_what_cannot_be_mapped_is_a_one_line_error(tmp_path, capsys, build, message):
    assert message in _cli_error(tmp_path, capsys, build(tmp_path))


def test_a_config_that_is_not_an_object_is_named(tmp_path, capsys):
    src = write_official(tmp_path / "src", official_config(), official_weights(official_config()))
    (src / "config.json").write_text("[1, 2]")
    assert "must hold a JSON object" in _cli_error(tmp_path, capsys, ["--from-official", str(src), "--method", "ssa"])


def test_missing_files_are_named(tmp_path, capsys):
    assert "does not exist" in _cli_error(tmp_path, capsys, ["--from-official", str(tmp_path / "nope"), "--method", "ssa"])
    src = write_official(tmp_path / "src", official_config(), official_weights(official_config()))
    (src / "model.safetensors").unlink()
    assert "no model.safetensors" in _cli_error(tmp_path, capsys, ["--from-official", str(src), "--method", "ssa"])


def test_budget_overrides_and_decode(tmp_path):
    model, cfg, w, _ = convert(tmp_path, "ssa", extra=("--block-size", "8", "--block-count", "2"))
    assert (model.config.block_size, model.config.block_count) == (8, 2)
    ids = torch.randint(0, V, (1, 27), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids, attention_mode="sparse").logits
        cache = model(ids[:, :20], use_cache=True).past_key_values
        steps = [model(ids[:, t:t + 1], past_key_values=cache).logits[:, -1] for t in range(20, 27)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 20:], rtol=1e-4, atol=1e-4)
