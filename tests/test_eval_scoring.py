"""Log-likelihood scoring, multiple-choice metrics and perplexity against hand computations."""

import math

import pytest
import torch
from test_eval_common import BigramModel, tiny_runs  # noqa: F401  (fixture)

from ssa.evaluation.loglikelihood import encode_pair, greedy_generate, score_continuations
from ssa.evaluation.multiple_choice import evaluate_items, fewshot_context, item_metrics
from ssa.evaluation.perplexity import Accumulator, budget_sweep, make_rows, sliding_window_score
from ssa.evaluation.text import token_byte_lengths
from ssa.training.tokenizer import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def bigram(seed=0):
    g = torch.Generator().manual_seed(seed)
    return BigramModel(torch.randn(257, 257, generator=g) * 3)


def brute_ll(model, ids_ctx, ids_cont):
    """Sum of log p(cont_i | prev token) from the bigram table, by hand."""
    logp = torch.log_softmax(model.table, -1)
    seq = ids_ctx + ids_cont
    return sum(float(logp[seq[i - 1], seq[i]]) for i in range(len(ids_ctx), len(seq)))


def test_encode_pair_moves_trailing_space(tok):
    ctx, cont = encode_pair(tok, "Question: a b ", "c")
    assert bytes(ctx).decode() == "Question: a b" and bytes(cont).decode() == " c"
    ctx, cont = encode_pair(tok, "", "hi")
    assert ctx == [256] and cont == list(b"hi")


def test_score_continuations_matches_hand_computation(tok):
    model = bigram()
    reqs = [("Hello", " world"), ("A", " bb"), ("", "xyz"), ("long context " * 10, " end")]
    pairs = [encode_pair(tok, c, x) for c, x in reqs]
    got = score_continuations(model, pairs, max_length=1000, batch_size=3)
    logp = torch.log_softmax(model.table, -1)
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        assert ll == pytest.approx(brute_ll(model, ctx, cont), abs=1e-4)
        seq = ctx + cont
        exp_greedy = all(int(logp[seq[i - 1]].argmax()) == seq[i] for i in range(len(ctx), len(seq)))
        assert greedy == exp_greedy
    # Truncation keeps the last max_length tokens: a bigram model does not care, the result is equal.
    short = score_continuations(model, pairs, max_length=6, batch_size=2)
    for a, b in zip(got, short):
        assert a[0] == pytest.approx(b[0], abs=1e-4)


def test_greedy_generate_follows_argmax_and_stops(tok):
    table = torch.full((257, 257), -10.0)
    for a, b in [(ord("a"), ord("b")), (ord("b"), ord("c")), (ord("c"), 256)]:
        table[a, b] = 10.0
    model = BigramModel(table)
    assert greedy_generate(model, [ord("a")], 10, stop_ids={256}) == [ord("b"), ord("c")]
    assert greedy_generate(model, [ord("a")], 1, stop_ids={256}) == [ord("b")]


def test_item_metrics_acc_vs_acc_norm_known_values():
    # acc picks the higher total; acc_norm divides by the choice's characters (-4/2 = -2 vs -6/6 = -1).
    m = item_metrics([-4.0, -6.0], ["ab", "abcdef"], gold=1)
    assert m == {"acc": 0.0, "acc_norm": 1.0, "acc_bytes": 1.0}
    # Characters vs bytes: "é" is 1 character but 2 bytes.
    m = item_metrics([-3.3, -4.0], ["ééé", "abcd"], gold=0)
    assert m == {"acc": 1.0, "acc_norm": 0.0, "acc_bytes": 1.0}  # chars: -1.1 vs -1.0; bytes: -0.55 vs -1.0
    # Ties go to the first choice, as numpy.argmax.
    assert item_metrics([-1.0, -1.0], ["a", "b"], gold=0)["acc"] == 1.0


def test_fewshot_context_format():
    items = [{"query": f"Q{i}:", "choices": [f"a{i}", f"b{i}"], "gold": i % 2} for i in range(5)]
    assert fewshot_context(items, 2, 0) == "Q2:"
    ctx = fewshot_context(items, 2, 2, seed=7)
    shots = ctx.split("\n\n")
    assert len(shots) == 3 and shots[-1] == "Q2:"
    for shot in shots[:2]:
        q = shot.split(" ")[0]
        j = int(q[1:-1])
        assert j != 2 and shot == f"Q{j}: " + items[j]["choices"][items[j]["gold"]]
    assert fewshot_context(items, 2, 2, seed=7) == ctx  # seeded


def test_evaluate_items_against_brute_force(tok):
    model = bigram(3)
    items = [{"query": "Question: pick one\n", "choices": ["yes", "no way", "maybe so"], "gold": g} for g in (0, 1, 2)]
    items += [{"query": "The cat", "choices": [" sat", "ran off"], "gold": 1}]
    res = evaluate_items(model, tok, items, max_length=512, progress=False)
    acc, acc_norm = [], []
    for it in items:
        lls = []
        for c in it["choices"]:
            ctx, cont = encode_pair(tok, it["query"], " " + c)
            lls.append(brute_ll(model, ctx, cont))
        acc.append(float(max(range(len(lls)), key=lambda i: (lls[i], -i)) == it["gold"]))
        normed = [ll / len(c) for ll, c in zip(lls, it["choices"])]
        acc_norm.append(float(max(range(len(lls)), key=lambda i: (normed[i], -i)) == it["gold"]))
    assert res["n"] == 4
    assert res["acc"] == pytest.approx(sum(acc) / 4)
    assert res["acc_norm"] == pytest.approx(sum(acc_norm) / 4)
    assert evaluate_items(model, tok, items, 512, limit=2, progress=False)["n"] == 2


def test_byte_lengths_byte_and_gpt2_tokenizers(tok):
    text = "naïve café — 東京 ok"
    ids = tok.encode(text, add_special_tokens=False)
    lengths = token_byte_lengths(tok)
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    from ssa.training.tokenizer import gpt2_tokenizer, shared_data_dir

    if shared_data_dir() is None or not (shared_data_dir() / "tokenizer" / "gpt2" / "vocab.json").is_file():
        pytest.skip("shared GPT-2 tokenizer files not available")
    g = gpt2_tokenizer()
    ids = g.encode(text, add_special_tokens=False)
    assert int(token_byte_lengths(g)[ids].sum()) == len(text.encode("utf-8"))


def test_sliding_window_scores_every_target_once():
    model = bigram(1)
    ids = torch.randint(0, 256, (50,))
    logp = torch.log_softmax(model.table, -1)
    expected = -sum(float(logp[ids[i - 1], ids[i]]) for i in range(1, 50))
    for window, stride in [(50, 10), (16, 8), (9, 1), (64, 32)]:
        acc = Accumulator(torch.ones(257, dtype=torch.long))
        sliding_window_score(model, ids, window, stride, acc, "full")
        assert acc.tokens == 49
        assert acc.nll == pytest.approx(expected, rel=1e-5)
        assert all(shape[1] <= window for _, _, shape in model.calls)
        model.calls.clear()
    with pytest.raises(ValueError, match="stride"):
        sliding_window_score(model, ids, 8, 8, Accumulator(torch.ones(257, dtype=torch.long)), "full")


def test_budget_sweep_on_tiny_model(tiny_runs):  # noqa: F811
    from ssa.evaluation.loading import load
    from ssa.evaluation.text import held_out_documents, token_stream

    loaded = load(tiny_runs["moba"])
    stream = token_stream(held_out_documents(loaded.train_config), loaded.tokenizer)
    rows = make_rows(stream, 64, limit=3)
    res = budget_sweep(loaded.model, rows, token_byte_lengths(loaded.tokenizer), ("full", "sparse"), [1, 2, 8],
                       progress=False)
    by = {(r["mode"], r["block_count"]): r for r in res}
    # Brute force: mean NLL of the full forward with labels (the model's own cross-entropy).
    with torch.no_grad():
        on_device = rows.to(next(loaded.model.parameters()).device)  # `load` picks the GPU when there is one
        ce = float(loaded.model(on_device, labels=on_device, attention_mode="full").ce_loss)
    assert by[("full", None)]["nats_per_token"] == pytest.approx(ce, rel=1e-5)
    assert by[("full", None)]["tokens"] == 3 * 63
    # Byte tokenizer: bits per byte = nats per token / ln 2.
    assert by[("full", None)]["bpb"] == pytest.approx(ce / math.log(2), rel=1e-5)
    # 8 blocks of 8 cover all 64 positions: sparse equals full.
    assert by[("sparse", 8)]["nll"] == pytest.approx(by[("full", None)]["nll"], rel=1e-5)
    assert by[("sparse", 1)]["receptive_field"] == 8
    assert by[("sparse", 1)]["nll"] != pytest.approx(by[("full", None)]["nll"], rel=1e-6)
