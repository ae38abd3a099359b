"""Compiled decoder blocks over packed documents: one graph serves every batch.

The number of documents in a batch (the length of `cu_seqlens`) and their lengths change from batch
to batch. The blocks are compiled as the trainer compiles them (`train.compile`), with a backend that
counts the graphs dynamo hands it and `fullgraph=True` (a graph break raises), and must not compile
again after the first batch; their losses and gradients must be the eager model's.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

from ssa.model import SSAConfig, SSAForCausalLM

B, T, VOCAB = 2, 16, 64
# Document starts inside the rows (every row start is one too): 1 to 5 documents per row, lengths
# 1 to 16, rarely a multiple of the block size.
RESTARTS = [[(7,), (3, 11)], [(1, 2, 15), ()], [(5, 9, 13, 14), (10,)], [(), (4,)]]


# backend="triton" runs on CUDA tensors natively and on CPU tensors in Triton's interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def batch(i):
    ids = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(i))
    positions = torch.arange(T).repeat(B, 1)
    for row, starts in enumerate(RESTARTS[i]):
        for s in starts:
            positions[row, s:] = torch.arange(T - s)
    return ids.to(DEVICE), positions.to(DEVICE)


def tiny_model(method):
    torch.manual_seed(0)
    # backend="triton": the GPU path (custom ops, the document block table) in Triton's interpreter.
    return SSAForCausalLM(SSAConfig(
        method=method, vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, block_size=4, block_count=3, backend="triton",
    )).to(DEVICE).train()


@pytest.mark.parametrize("method,mode", [("full", None), ("ssa", "full"), ("ssa", "sparse"), ("nsa", None)])
def test_packed_batches_compile_once_and_match_eager(method, mode):
    torch._dynamo.reset()
    eager = tiny_model(method)
    model = copy.deepcopy(eager)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    for layer in model.model.layers:  # as the trainer's `train.compile` does, but a break raises
        layer.compile(dynamic=False, backend=counting_backend, fullgraph=True)

    for i in range(len(RESTARTS)):
        ids, positions = batch(i)
        losses, grads = [], []
        for m in (eager, model):
            m.zero_grad()
            out = m(ids, labels=ids, attention_mode=mode, position_ids=positions)
            out.loss.backward()
            losses.append(out.loss.detach())
            grads.append(m.model.layers[0].self_attn.q_proj.weight.grad.clone())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
        if i == 0:
            warm = len(graphs)
            assert warm >= 1  # dynamo did capture the blocks
        else:  # another document count: the same graph, no recompile
            assert len(graphs) == warm, f"batch {i} recompiled the blocks ({len(graphs) - warm} new graphs)"

    if method != "full":  # (the Triton interpreter is slow: the evaluation graph is checked once)
        return
    with torch.no_grad():  # evaluation: a graph of its own (no autograd), then no recompile either
        counts = []
        for i in (1, 2):
            ids, positions = batch(i)
            loss = model(ids, labels=ids, attention_mode=mode, position_ids=positions).loss
            ref = eager(ids, labels=ids, attention_mode=mode, position_ids=positions).loss
            torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
            counts.append(len(graphs))
        assert counts[0] == counts[-1]


def test_masked_document_attention_is_per_document_attention():
    # The compiled path without the varlen kernel: one masked SDPA call, the same function as running
    # every document on its own (GQA, documents of length 1 and longer).
    from ssa.ops import dense, reference

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 23, h, 8, generator=gen, dtype=torch.float64) for h in (4, 2, 2))
    cu = torch.tensor([0, 1, 9, 10, 23], dtype=torch.int32)
    torch.testing.assert_close(dense.masked_document_attention(q, k, v, 0.3, cu),
                               reference.full_attention(q, k, v, 0.3, cu))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_max_seqlen_must_be_a_positive_int(bad):
    from ssa import ops

    q = torch.randn(1, 8, 2, 4)
    with pytest.raises((TypeError, ValueError), match="max_seqlen"):
        ops.full_attention(q, q, q, cu_seqlens=torch.tensor([0, 3, 8], dtype=torch.int32), max_seqlen=bad)
