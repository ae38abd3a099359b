"""Llama -> SSA conversion: identical full-mode logits, RoPE settings of both transformers
layouts, tied/untied heads, GQA, tokenizer files, and one-line errors for bad input."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ssa.cli import main
from ssa.model import SSAForCausalLM
from ssa.model.convert import rope_settings

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}


def save_llama(path, tie=True, llama3=False, **extra):
    torch.manual_seed(0)
    kw = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tie, rope_theta=50000.0)
    if llama3:
        kw["rope_scaling"] = dict(LLAMA3, rope_theta=50000.0)
    kw.update(extra)
    model = LlamaForCausalLM(LlamaConfig(**kw)).eval()
    model.save_pretrained(path)
    (path / "tokenizer.json").write_text("{}")  # only copied, never parsed
    return model


@pytest.mark.parametrize("tie,llama3", [(True, False), (False, True)])
def test_converted_model_reproduces_llama_logits(tmp_path, tie, llama3):
    llama = save_llama(tmp_path / "llama", tie=tie, llama3=llama3)
    rc = main(["convert", "--from-llama", str(tmp_path / "llama"), "--method", "ssa", "--out", str(tmp_path / "ssa")])
    assert rc == 0
    ssa = SSAForCausalLM.from_pretrained(tmp_path / "ssa").eval()
    cfg = ssa.config
    assert (cfg.method, cfg.num_key_value_heads, cfg.tie_word_embeddings, cfg.rope_theta) == ("ssa", 2, tie, 50000.0)
    assert (cfg.rope_llama3_scaling or {}).get("factor") == (8.0 if llama3 else None)
    assert (tmp_path / "ssa" / "tokenizer.json").is_file()
    for layer in ssa.model.layers:  # the gate is exactly 1 by construction: sigmoid(0) * 2
        assert torch.equal(layer.self_attn.g_proj.weight, torch.zeros_like(layer.self_attn.g_proj.weight))
    ids = torch.randint(1, 64, (2, 40), generator=torch.Generator().manual_seed(1))  # 0 = pad; past original context
    with torch.no_grad():
        want = llama(ids).logits
        got = ssa(ids, attention_mode="full").logits
        cached = ssa.generate(ids, max_new_tokens=5, do_sample=False, attention_mode="full", pad_token_id=0)
        ref = llama.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert torch.equal(cached, ref)


def test_conversion_with_a_padded_vocabulary_keeps_the_logits(tmp_path):
    llama = save_llama(tmp_path / "llama", tie=False, vocab_size=60)
    assert main(["convert", "--from-llama", str(tmp_path / "llama"), "--out", str(tmp_path / "ssa"),
                 "--pad-vocab-multiple", "64"]) == 0
    ssa = SSAForCausalLM.from_pretrained(tmp_path / "ssa").eval()
    assert ssa.config.padded_vocab_size == 64 and ssa.lm_head.weight.shape[0] == 64
    ids = torch.randint(1, 60, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ssa(ids, attention_mode="full").logits, llama(ids).logits, atol=1e-6, rtol=1e-5)


def test_rope_settings_read_both_transformers_layouts():
    v4 = {"rope_theta": 500000.0, "rope_scaling": dict(LLAMA3)}
    v5 = {"rope_parameters": dict(LLAMA3, rope_theta=500000.0)}
    for cfg in (v4, v5):
        theta, scaling = rope_settings(cfg)
        assert theta == 500000.0 and scaling["factor"] == 8.0 and scaling["rope_type"] == "llama3"
    assert rope_settings({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}) == (1e4, None)
    with pytest.raises(ValueError, match="RoPE scaling 'yarn'"):
        rope_settings({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def test_nsa_conversion_has_three_gates_per_head(tmp_path):
    save_llama(tmp_path / "llama")
    assert main(["convert", "--from-llama", str(tmp_path / "llama" / "config.json"), "--method", "nsa",
                 "--out", str(tmp_path / "nsa"), "--block-count", "4"]) == 0
    model = SSAForCausalLM.from_pretrained(tmp_path / "nsa")
    assert model.config.block_count == 4
    assert model.model.layers[0].self_attn.g_proj.weight.shape == (3 * 4, 32)


def _broken_bias(tmp_path):
    save_llama(tmp_path / "src", attention_bias=True)
    return ["--from-llama", str(tmp_path / "src")], "attention_bias"


def _mistral(tmp_path):
    save_llama(tmp_path / "src")
    cfg = json.loads((tmp_path / "src" / "config.json").read_text())
    cfg.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (tmp_path / "src" / "config.json").write_text(json.dumps(cfg))
    return ["--from-llama", str(tmp_path / "src")], "incompatible architecture"


def _no_weights(tmp_path):
    save_llama(tmp_path / "src")
    (tmp_path / "src" / "model.safetensors").unlink()
    return ["--from-llama", str(tmp_path / "src")], "no model.safetensors"


def _missing(tmp_path):
    return ["--from-llama", str(tmp_path / "nope")], "does not exist"


def _bad_budget(tmp_path):
    save_llama(tmp_path / "src")
    return ["--from-llama", str(tmp_path / "src"), "--block-count", "0"], "--block-count must be >= 1"


def _bad_method(tmp_path):
    save_llama(tmp_path / "src")
    return ["--from-llama", str(tmp_path / "src"), "--method", "dense"], "--method must be one of"


@pytest.mark.parametrize("case", [_broken_bias, _mistral, _no_weights, _missing, _bad_budget, _bad_method])
def test_bad_input_gives_one_line_error(tmp_path, capsys, case):
    args, message = case(tmp_path)
    capsys.readouterr()
    rc = main(["convert", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err, err


def test_refuses_to_overwrite_a_non_empty_out(tmp_path, capsys):
    save_llama(tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    assert main(["convert", "--from-llama", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_export_of_a_training_run_loads_with_auto_classes(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from ssa.model import SSAConfig

    step = tmp_path / "run" / "checkpoints" / "step_00000010"
    model = SSAForCausalLM(SSAConfig(method="moba", vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, block_size=4)).eval()
    model.save_pretrained(step)
    torch.save({"step": 10}, step / "training_state.pt")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000010\n")
    out = tmp_path / "export"
    assert main(["convert", "--from-run", str(tmp_path / "run"), "--out", str(out), "--block-count", "7"]) == 0
    assert not (out / "training_state.pt").exists()
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.method == "moba" and loaded.config.block_count == 7
    ids = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids).logits, model(ids, block_count=7).logits)
    capsys.readouterr()
    assert main(["convert", "--from-run", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
