"""Static KV cache, chunked prefill into a cache, and greedy generation through the (captured) step.

Every expectation is an independent computation: one full forward over the whole sequence, the
growing (dynamic) cache, or transformers' generate. CUDA-graph capture itself runs on a GPU only.
"""

import logging

import pytest
import torch

from ssa.generation import GreedyStep, greedy_generate
from ssa.model import SSAConfig, SSAForCausalLM
from ssa.model.modeling import CACHE_FIELD

V = 64
METHOD_MODES = [("full", "full"), ("moba", "sparse"), ("moba", "full"), ("nsa", "sparse"), ("ssa", "sparse"),
                ("ssa", "full")]


def tiny_model(method, seed=0, **overrides):
    torch.manual_seed(seed)
    kw = dict(method=method, vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, block_size=4, block_count=3, nsa_window=6, initializer_range=0.3,
              pad_token_id=0, eos_token_id=None)
    kw.update(overrides)
    return SSAForCausalLM(SSAConfig(**kw)).eval()


def ids_of(B, T, seed=1):
    return torch.randint(1, V, (B, T), generator=torch.Generator().manual_seed(seed))


def cache_of(out):
    return getattr(out, CACHE_FIELD)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("method,mode", METHOD_MODES)
def test_chunked_prefill_matches_one_forward(method, mode, static):
    """A prompt fed in uneven chunks (crossing block edges, a single token, a chunk longer than the
    budget covers) gives the logits of one forward over the concatenation."""
    model = tiny_model(method)
    ids = ids_of(2, 41)
    cuts = [0, 7, 8, 19, 20, 41]  # chunks of 7, 1, 11, 1, 21 tokens
    with torch.no_grad():
        ref = model(ids, attention_mode=mode).logits
        cache = model.new_cache(max_length=45 if static else None)
        got = [model(ids[:, a:b], cache=cache, attention_mode=mode).logits for a, b in zip(cuts, cuts[1:])]
    torch.testing.assert_close(torch.cat(got, 1), ref, atol=2e-5, rtol=2e-5)
    assert cache.host_lengths == [41, 41] and cache.static == static


def test_chunk_after_left_padded_prompt_matches_each_row_alone():
    """Multi-turn on a ragged batch: a left-padded first turn, then a chunk for every row."""
    model = tiny_model("ssa")
    a, b = ids_of(1, 13, seed=2), ids_of(1, 6, seed=3)
    turn2 = ids_of(2, 9, seed=4)
    ids = torch.cat([a, torch.cat([torch.zeros(1, 7, dtype=torch.long), b], 1)])
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    with torch.no_grad():
        cache = model.new_cache(max_length=40)
        model(ids, attention_mask=mask, cache=cache)
        got = model(turn2, cache=cache).logits
        for row, prompt in enumerate((a, b)):
            ref = model(torch.cat([prompt, turn2[row:row + 1]], 1)).logits[0, -9:]
            torch.testing.assert_close(got[row], ref, atol=2e-5, rtol=2e-5)
    assert cache.host_lengths == [22, 15]


@pytest.mark.parametrize("method,mode", [("nsa", "sparse"), ("ssa", "sparse"), ("ssa", "full")])
def test_static_decode_step_equals_dynamic_cache(method, mode):
    """The device-only one-token step of the static cache (the step a CUDA graph captures) gives the
    dynamic cache's logits, token after token, across block edges, on ragged rows."""
    model = tiny_model(method)
    ids = ids_of(2, 30)
    mask = torch.ones_like(ids[:, :11])
    mask[0, :3] = 0  # row 0: a shorter, left-padded prompt
    with torch.no_grad():
        static, dynamic = model.new_cache(max_length=32), model.new_cache()
        for cache in (static, dynamic):
            model(ids[:, :11], attention_mask=mask, cache=cache, attention_mode=mode)
        for t in range(11, 30):
            m = torch.cat([mask, torch.ones(2, t - 10, dtype=torch.long)], 1)
            want = model(ids[:, t:t + 1], attention_mask=m, cache=dynamic, attention_mode=mode).logits
            got = model(ids[:, t:t + 1], cache=static, attention_mode=mode).logits  # begin_decode path
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert static.host_lengths == dynamic.host_lengths == [27, 30]
    assert static.lengths.tolist() == [27, 30]
    assert static.layers[0].k.shape[1] == 32  # allocated once, never grown


@pytest.mark.parametrize("method", ["full", "moba", "nsa", "ssa"])
def test_greedy_generate_matches_transformers_generate(method):
    model = tiny_model(method)
    ids = ids_of(2, 19)
    want = model.generate(ids, max_new_tokens=12, do_sample=False)
    got = greedy_generate(model, ids, 12, capture=False)
    assert torch.equal(got, want)
    chunked = greedy_generate(model, ids, 12, capture=False, prefill_chunk=5)
    assert torch.equal(chunked, want)
    assert len(set(got[:, 19:].flatten().tolist())) > 2  # a non-degenerate continuation


def test_greedy_generate_left_padded_prompt_and_budget():
    model = tiny_model("ssa")
    a, b = ids_of(1, 15, seed=5), ids_of(1, 9, seed=6)
    ids = torch.cat([a, torch.cat([torch.zeros(1, 6, dtype=torch.long), b], 1)])
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    got = greedy_generate(model, ids, 10, attention_mask=mask, block_count=1, capture=False)
    for row, prompt in enumerate((a, b)):
        want = model.generate(prompt, max_new_tokens=10, do_sample=False, block_count=1)
        assert torch.equal(got[row, 15:], want[0, prompt.shape[1]:])


def test_static_cache_errors_before_any_change():
    model = tiny_model("ssa")
    ids = ids_of(1, 10)
    with torch.no_grad():
        cache = model.new_cache(max_length=11)  # rounds up to whole blocks: 12 tokens
        model(ids, cache=cache)
        model(ids[:, :2], cache=cache)
        k_before = cache.layers[0].k.clone()
        with pytest.raises(ValueError, match="static cache holds 12 tokens per row but this pass needs 13"):
            model(ids[:, :1], cache=cache)
        assert cache.host_lengths == [12] and torch.equal(cache.layers[0].k, k_before)
        with pytest.raises(ValueError, match="needs 14"):
            model(ids[:, :2], cache=cache, attention_mask=torch.ones(1, 14, dtype=torch.long))
        with pytest.raises(ValueError, match="either `cache` or `past_key_values`"):
            model(ids[:, :1], cache=cache, past_key_values=model.new_cache())
    with pytest.raises(ValueError, match="max_length must be None"):
        model.new_cache(max_length=0)
    with pytest.raises(ValueError, match="static cache"):
        GreedyStep(model, model.new_cache())
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        greedy_generate(model, ids, 0)
    with pytest.raises(ValueError, match="prefill_chunk"):
        greedy_generate(model, ids, 2, prefill_chunk=0)


def test_cache_keyword_and_no_deprecation_warning(caplog):
    """Both argument names work; no transformers deprecation warning on cached calls or generate."""
    model = tiny_model("ssa")
    ids = ids_of(1, 12)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        ref = model(ids).logits
        a = model(ids[:, :8], use_cache=True)
        b = model(ids[:, 8:], cache=cache_of(a))
        c = model(ids[:, :8], use_cache=True)
        d = model(ids[:, 8:], past_key_values=cache_of(c))
        model.generate(ids, max_new_tokens=3, do_sample=False)
    torch.testing.assert_close(b.logits, ref[:, 8:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d.logits, ref[:, 8:], atol=1e-5, rtol=1e-5)
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a GPU")
@pytest.mark.parametrize("method,mode,dtype", [("ssa", "sparse", torch.float32), ("ssa", "full", torch.float32),
                                               ("nsa", "sparse", torch.float32), ("ssa", "sparse", torch.bfloat16)])
def test_captured_greedy_equals_eager(method, mode, dtype):
    model = tiny_model(method, block_size=16, block_count=4, nsa_window=32).cuda().to(dtype)
    ids = ids_of(3, 200).cuda()
    eager = greedy_generate(model, ids, 90, attention_mode=mode, capture=False)  # crosses block edges
    captured = greedy_generate(model, ids, 90, attention_mode=mode, capture=True)
    assert torch.equal(captured, eager)
    if dtype == torch.float32:  # and both equal the cache-free full forward's greedy choice
        with torch.no_grad():
            logits = model(eager[:, :-1], attention_mode=mode).logits[:, 199:]
        assert torch.equal(logits.argmax(-1), eager[:, 200:])
