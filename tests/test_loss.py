"""Chunked LM-head cross-entropy and the padded vocabulary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssa.model import SSAConfig, SSAForCausalLM
from ssa.model.loss import IGNORE_INDEX, linear_cross_entropy


def _dense_ce(h, w, y, vocab):
    return F.cross_entropy(h @ w[:vocab].t(), y, ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 64])
@pytest.mark.parametrize("vocab,padded", [(11, 11), (11, 16), (50, 64)])
def test_chunked_ce_matches_dense_value_and_gradients(chunk_rows, vocab, padded):
    g = torch.Generator().manual_seed(chunk_rows * 100 + vocab)
    h = torch.randn(13, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(padded, 8, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, vocab, (13,), generator=g)
    y[[2, 5]] = IGNORE_INDEX
    loss = linear_cross_entropy(h, w, y, vocab, chunk_rows=chunk_rows)
    gh, gw = torch.autograd.grad(3.0 * loss, (h, w))
    ref = _dense_ce(h, w, y, vocab)
    rh, rw = torch.autograd.grad(3.0 * ref, (h, w))
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gh, rh)
    torch.testing.assert_close(gw, rw)
    assert gw[vocab:].abs().max() == 0 if padded > vocab else True  # padded rows get no gradient


def test_chunked_ce_under_bf16_autocast_matches_dense():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 16, generator=g, requires_grad=True)
    w = torch.randn(64, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 60, (40,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, y, 60, chunk_rows=9)
        ref = F.cross_entropy(F.linear(h, w)[:, :60].float(), y)
    assert loss.dtype == torch.float32
    gh, gw = torch.autograd.grad(loss, (h, w))
    rh, rw = torch.autograd.grad(ref, (h, w))
    torch.testing.assert_close(loss, ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gh, rh, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(gw, rw, rtol=2e-2, atol=2e-3)
    assert gh.dtype == gw.dtype == torch.float32


def _cxx_compiler():
    import shutil

    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


# Inductor's CPU code generation calls torch.jit.script_method inside torch itself (torch 2.13).
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_chunk_math_matches_eager(backend):
    """The trainer's `train.compile` runs each chunk's math compiled: same loss and gradients."""
    if backend == "inductor" and not _cxx_compiler():
        pytest.skip("inductor on the CPU needs a C++ compiler")
    g = torch.Generator().manual_seed(1)
    h = torch.randn(13, 8, generator=g, requires_grad=True)
    w = torch.randn(16, 8, generator=g, requires_grad=True)
    y = torch.randint(0, 11, (13,), generator=g)
    y[[0, 7]] = IGNORE_INDEX
    results = []
    for compile_backend in (None, backend):  # chunks of 5, 5 and 3 rows: two compiled shapes
        loss = linear_cross_entropy(h, w, y, 11, chunk_rows=5, compile_backend=compile_backend)
        results.append((loss, *torch.autograd.grad(2.0 * loss, (h, w))))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][0], _dense_ce(h, w, y, 11), rtol=1e-5, atol=1e-6)


def test_chunked_ce_rejects_bad_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        linear_cross_entropy(torch.zeros(2, 4), torch.zeros(8, 4), torch.zeros(2, dtype=torch.long), 9)


def _tiny(pad, tie=True, method="full"):
    torch.manual_seed(0)
    cfg = SSAConfig(method=method, vocab_size=37, pad_vocab_multiple=pad, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, block_size=4, block_count=2,
                    tie_word_embeddings=tie)
    return SSAForCausalLM(cfg)


@pytest.mark.parametrize("tie", [True, False])
def test_padded_vocab_is_masked_in_logits_loss_and_generate(tie):
    model = _tiny(16, tie)
    assert model.config.padded_vocab_size == 48
    assert model.model.embed_tokens.weight.shape[0] == 48
    head = model.model.embed_tokens.weight if tie else model.lm_head.weight
    with torch.no_grad():  # make padded ids the most likely if anything let them through
        head[37:] = 50.0 * head[:37].norm(dim=0, keepdim=True).clamp_min(1.0)
    x = torch.randint(0, 37, (2, 12))
    logits = model.eval()(x).logits
    assert logits.shape == (2, 12, 37)
    # The loss with labels equals the CE of the returned (real-vocabulary) logits.
    out = model(x, labels=x)
    torch.testing.assert_close(out.logits, logits)  # eval mode returns the logits with the loss
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
    torch.testing.assert_close(out.ce_loss, ref, rtol=1e-5, atol=1e-5)
    assert model.train()(x, labels=x).logits is None  # training never builds the whole-batch logits
    model.eval()
    gen = model.generate(x[:, :4], attention_mask=torch.ones_like(x[:, :4]), max_new_tokens=6, do_sample=True,
                         top_k=0, pad_token_id=0)
    assert int(gen.max()) < 37


def test_padding_leaves_the_function_unchanged():
    """Same weights for the real ids: padding changes neither logits nor loss nor gradients."""
    plain, padded = _tiny(1), _tiny(64)
    with torch.no_grad():
        for (n, p), (_, q) in zip(plain.named_parameters(), padded.named_parameters()):
            q[:p.shape[0]].copy_(p) if p.shape != q.shape else q.copy_(p)
    x = torch.randint(0, 37, (2, 10))
    torch.testing.assert_close(plain.eval()(x).logits, padded.eval()(x).logits)
    lp, lq = plain.train()(x, labels=x).loss, padded.train()(x, labels=x).loss
    torch.testing.assert_close(lp, lq)
    lp.backward()
    lq.backward()
    gp, gq = plain.model.embed_tokens.weight.grad, padded.model.embed_tokens.weight.grad
    torch.testing.assert_close(gq[:37], gp)
    assert gq[37:].abs().max() == 0


def test_pad_vocab_multiple_is_validated():
    with pytest.raises(ValueError, match="pad_vocab_multiple"):
        SSAConfig(vocab_size=10, pad_vocab_multiple=0)
