"""Passkey retrieval: prompt construction and both scores, with a perfect copier and a blind model."""

import random

import pytest
import torch
from test_eval_common import BigramModel, CopyModel

from ssa.evaluation.loading import Loaded
from ssa.evaluation.retrieval import RetrievalSpec, make_sample, min_prompt_tokens, run_retrieval
from ssa.training.tokenizer import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def fake_loaded(model, tok):
    return Loaded(model=model, tokenizer=tok, step_dir=None, run_dir=None, train_config={"data": {"seq_len": 256}})


def test_sample_has_exact_length_needle_depth_and_is_seeded(tok):
    for depth in (0.0, 0.5, 1.0):
        s = make_sample(tok, 300, depth, "filler", random.Random(1), 5)
        assert len(s["ids"]) == 300
        text = bytes(s["ids"]).decode()
        needle = f" The pass key is {s['key']}."
        assert text.count(s["key"]) == 2 and needle in text
        assert text.endswith("What is the pass key? The pass key is")
        hay_len = 300 - min_prompt_tokens(tok) + 16
        # The needle starts at depth * haystack tokens after the instruction.
        start = text.index(needle)
        assert abs((start - s["needle_at"])) == 0
        assert s["needle_at"] - len(text.split("\n")[0]) - 1 == round(depth * hay_len)
        assert s["key"] not in s["distractors"] and len(s["distractors"]) == 5
    a = make_sample(tok, 300, 0.5, "filler", random.Random(3), 5)
    b = make_sample(tok, 300, 0.5, "filler", random.Random(3), 5)
    assert a == b
    book = "It was a dark and stormy night; the rain fell in torrents. " * 50
    t = make_sample(tok, 300, 0.3, "text", random.Random(0), 3, book_text=book)
    assert len(t["ids"]) == 300 and "stormy" in bytes(t["ids"]).decode()
    with pytest.raises(ValueError, match="too short"):
        make_sample(tok, 50, 0.5, "filler", random.Random(0), 3)


def test_copier_retrieves_everything_and_blind_model_nothing(tok):
    spec = RetrievalSpec(lengths=[200, 260], depths=[0.0, 0.5, 1.0], haystacks=["filler"], samples=2,
                         num_distractors=4, seed=5)
    res = run_retrieval(fake_loaded(CopyModel(), tok), spec, ["full"], progress=False)
    assert len(res) == 6
    assert all(r["exact_match"] == 1.0 and r["rank_accuracy"] == 1.0 and r["mean_rank"] == 1.0 for r in res)
    # A model that ignores the context gives every key the same likelihood: ties rank the key last.
    blind = BigramModel(torch.zeros(257, 257))
    res = run_retrieval(fake_loaded(blind, tok), spec, ["full"], progress=False)
    assert all(r["rank_accuracy"] == 0.0 and r["mean_rank"] == 5.0 and r["exact_match"] == 0.0 for r in res)


def test_spec_validation():
    with pytest.raises(ValueError, match="haystacks"):
        RetrievalSpec(haystacks=["noise"])
    with pytest.raises(ValueError, match="depths"):
        RetrievalSpec(depths=[1.5])
