"""generate() with the SSA cache (greedy, sampling, beam, padding, per-call settings), HF loading,
and the `ssa generate` command."""

import pytest
import torch

from ssa.cli import main
from ssa.model import SSAConfig, SSAForCausalLM

V = 48


def tiny_model(method="ssa", seed=0, **overrides):
    torch.manual_seed(seed)
    kw = dict(method=method, vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, block_size=4, block_count=2, nsa_window=6, initializer_range=0.3,
              pad_token_id=0, eos_token_id=None)
    kw.update(overrides)
    return SSAForCausalLM(SSAConfig(**kw)).eval()


def prompt(batch=1, length=19, seed=1):
    return torch.randint(1, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def manual_greedy(model, ids, steps, **kw):
    """The expectation: argmax of a full (cache-free) forward over the growing sequence."""
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(ids, **kw).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    return ids


@pytest.mark.parametrize("method", ["full", "moba", "nsa", "ssa"])
def test_greedy_with_and_without_cache_give_the_same_tokens(method):
    model = tiny_model(method)
    ids = prompt(2)
    cached = model.generate(ids, max_new_tokens=14, do_sample=False, use_cache=True)
    uncached = model.generate(ids, max_new_tokens=14, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, manual_greedy(model, ids, 14))
    assert len(set(cached[:, 19:].flatten().tolist())) > 2  # a non-degenerate continuation


def test_per_call_mode_and_budget_reach_forward():
    model = tiny_model("ssa")
    ids = prompt(1, 25)
    for kw in (dict(attention_mode="sparse", block_count=1), dict(attention_mode="full"),
               dict(attention_mode="sparse", block_count=3, block_size=2)):
        out = model.generate(ids, max_new_tokens=8, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, **kw)
        ref = manual_greedy(model, ids, 8, **kw)
        assert torch.equal(out.sequences, ref), kw
        with torch.no_grad():
            ref_logits = model(ref[:, :-1], **kw).logits[0, 24:]
        torch.testing.assert_close(torch.cat(out.logits), ref_logits, atol=1e-5, rtol=1e-5)


def test_beam_search_and_sampling_match_the_uncached_run():
    model = tiny_model("moba")
    ids = prompt(2)
    beam = model.generate(ids, max_new_tokens=8, num_beams=3, do_sample=False)
    assert torch.equal(beam, model.generate(ids, max_new_tokens=8, num_beams=3, do_sample=False, use_cache=False))
    torch.manual_seed(5)
    s1 = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=6)
    torch.manual_seed(5)
    s2 = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=6, use_cache=False)
    assert torch.equal(s1, s2)


def test_left_padded_batch_generates_like_each_row_alone():
    model = tiny_model("ssa")
    a, b = prompt(1, 21, seed=2), prompt(1, 13, seed=3)
    ids = torch.cat([a, torch.cat([torch.zeros(1, 8, dtype=torch.long), b], 1)])
    mask = (ids != 0).long()
    mask[0] = 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=7, do_sample=False)
    assert torch.equal(out[0, 21:], model.generate(a, max_new_tokens=7, do_sample=False)[0, 21:])
    assert torch.equal(out[1, 21:], model.generate(b, max_new_tokens=7, do_sample=False)[0, 13:])


def test_auto_class_loading_with_config_overrides(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = tiny_model("ssa")
    model.save_pretrained(tmp_path)
    assert any(p.suffix == ".safetensors" for p in tmp_path.iterdir())
    assert AutoConfig.from_pretrained(tmp_path).model_type == "ssa"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attention_mode="full", block_count=5)
    assert isinstance(loaded, SSAForCausalLM)
    assert (loaded.config.attention_mode, loaded.config.block_count) == ("full", 5)
    ids = prompt()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids).logits, model(ids, attention_mode="full", block_count=5).logits)
    with pytest.raises(ValueError, match="block_count must be an int >= 1"):
        AutoModelForCausalLM.from_pretrained(tmp_path, block_count=0)
    with pytest.raises(ValueError, match="attention_mode must be one of"):
        AutoModelForCausalLM.from_pretrained(tmp_path, attention_mode="dense")
    with pytest.raises(ValueError, match="block_count must be an int >= 1"):
        model.generate(ids, max_new_tokens=2, block_count=0)


# ------------------------------------------------------------------------------------ the CLI


def save_with_tokenizer(model, path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>"] + [f"w{i}" for i in range(V - 2)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(path)
    model.save_pretrained(path)


def test_ssa_generate_streams_the_greedy_continuation(tmp_path, capsys):
    model = tiny_model("ssa")
    save_with_tokenizer(model, tmp_path)
    rc = main(["generate", str(tmp_path), "--prompt", "w3 w7 w11 w2 w9 w30 w31 w5 w6", "--max-new-tokens", "6",
               "--mode", "sparse", "--block-count", "1", "--device", "cpu"])
    assert rc == 0
    ids = torch.tensor([[5, 9, 13, 4, 11, 32, 33, 7, 8]])  # "w{i}" has id i + 2
    new = manual_greedy(model, ids, 6, attention_mode="sparse", block_count=1)[0, 9:].tolist()
    text = capsys.readouterr().out
    prompt_text = "w3 w7 w11 w2 w9 w30 w31 w5 w6"
    assert text.startswith(prompt_text)
    assert text[len(prompt_text):].split() == [f"w{i - 2}" for i in new]


@pytest.mark.parametrize("argv,message", [
    (["generate", "/nonexistent/ckpt", "--prompt", "w1"], "does not exist"),
    (["generate", "{ckpt}", "--prompt", "w1", "--block-count", "0"], "--block-count must be >= 1"),
    (["generate", "{ckpt}"], "give exactly one of --prompt"),
    (["generate", "{ckpt}", "--prompt-file", "/nonexistent/p.txt"], "--prompt-file"),
])
def test_ssa_generate_bad_input_is_one_line(tmp_path, capsys, argv, message):
    save_with_tokenizer(tiny_model("ssa"), tmp_path)
    capsys.readouterr()  # drop the save's progress output
    rc = main([a.replace("{ckpt}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err


def test_zero_token_type_ids_from_4x_tokenizers_are_accepted():
    model = tiny_model("ssa")
    ids = prompt()
    plain = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(model.generate(ids, token_type_ids=torch.zeros_like(ids), max_new_tokens=3, do_sample=False), plain)
    with pytest.raises(ValueError, match="token_type_ids must be all zeros"):
        model.generate(ids, token_type_ids=torch.ones_like(ids), max_new_tokens=3)
