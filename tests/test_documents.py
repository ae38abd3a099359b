"""Packed documents (`cu_seqlens`): every op and the model equal running the documents one by one.

The reference is checked against brute-force masked attention; the Triton kernels (interpreter on
CPU) against the reference, forward and backward; the model's packed batch against its documents
run separately (logits, losses, every method); the data's restarting positions against a loop.
"""

from __future__ import annotations

import math

import pytest
import torch

from ssa import ops
from ssa.ops import reference

DOC_LENGTHS = {
    "mixed": [5, 1, 19, 8, 1, 30, 3],  # partial blocks, length-1 documents, a multiple of the block (8)
    "many_short": [1, 2, 1, 3, 1, 1, 2, 5, 1, 4],
    "one": [37],
}


def _cu(lengths, device="cpu"):
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=device)


def _qkv(T, HQ, HK, D, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, T, h, D, generator=g).to(device, dtype) for h in (HQ, HK, HK)]


def _document_of(cu):
    T = int(cu[-1])
    return torch.searchsorted(cu.long(), torch.arange(T), right=True) - 1


# ----------------------------------------------------------------------------------------------
# Reference against brute force
# ----------------------------------------------------------------------------------------------
def _masked_attention(q, k, v, visible, scale):
    """Softmax attention under a boolean mask visible [HK or 1, T, T] (float64, GQA by repeat)."""
    G = q.shape[2] // k.shape[2]
    logits = torch.einsum("bthd,bshd->bhts", q.double(), k.double().repeat_interleave(G, 2)) * scale
    mask = visible.repeat_interleave(G, 0) if visible.shape[0] > 1 else visible
    logits = logits.masked_fill(~mask[None], float("-inf"))
    return torch.einsum("bhts,bshd->bthd", logits.softmax(-1), v.double().repeat_interleave(G, 2))


@pytest.mark.parametrize("case", sorted(DOC_LENGTHS))
def test_reference_full_attention_is_block_diagonal_causal(case):
    cu = _cu(DOC_LENGTHS[case])
    T = int(cu[-1])
    q, k, v = _qkv(T, 4, 2, 8)
    doc = _document_of(cu)
    t = torch.arange(T)
    visible = ((doc[:, None] == doc[None, :]) & (t[None, :] <= t[:, None]))[None]
    expected = _masked_attention(q, k, v, visible, 8 ** -0.5)
    torch.testing.assert_close(ops.full_attention(q, k, v, cu_seqlens=cu).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", sorted(DOC_LENGTHS))
def test_reference_selection_and_sparse_attention_stay_in_the_document(case):
    s, n = 4, 3
    cu = _cu(DOC_LENGTHS[case])
    T = int(cu[-1])
    q, k, v = _qkv(T, 4, 2, 8, seed=1)
    idx = ops.select_blocks(q, k, s, n, backend="torch", cu_seqlens=cu)
    doc = _document_of(cu)
    start = cu.long()[doc]
    local = torch.arange(T) - start
    # Block ids count from the document's first token: the own block is local // s, all others lower.
    assert bool((idx == (local // s)[None, :, None, None]).any(-1).all())
    assert bool(((idx < (local // s + 1)[None, :, None, None]) | (idx == -1)).all())
    # Sparse attention equals dense attention over the selected blocks at their absolute positions.
    t = torch.arange(T)
    key_block = (t - start) // s  # each key's local block in its own document
    same_doc = doc[:, None] == doc[None, :]
    chosen = (idx[0].long()[:, :, :, None] == key_block[None, None, None, :]).any(2)  # [T, HK, T]
    visible = chosen.permute(1, 0, 2) & same_doc[None] & (t[None, :] <= t[:, None])[None]
    expected = _masked_attention(q, k, v, visible, 8 ** -0.5)
    o = ops.block_sparse_attention(q, k, v, s, n, idx, backend="torch", cu_seqlens=cu)
    torch.testing.assert_close(o.double(), expected, atol=1e-5, rtol=1e-5)


def test_bad_cu_seqlens_are_named():
    q, k, v = _qkv(10, 2, 1, 8)
    with pytest.raises(ValueError, match="cu_seqlens must start at 0, end at seq_len=10"):
        ops.full_attention(q, k, v, cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match="never decrease"):
        ops.select_blocks(q, k, 4, 2, cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32))
    with pytest.raises(TypeError, match="cu_seqlens must be int32"):
        ops.block_sparse_attention(q, k, v, 4, 2, cu_seqlens=torch.tensor([0.0, 10.0]))
    with pytest.raises(ValueError, match="batch size must be 1"):
        q2, k2, v2 = (torch.cat([x, x]) for x in (q, k, v))
        ops.full_attention(q2, k2, v2, cu_seqlens=torch.tensor([0, 10], dtype=torch.int32))
    # Once checked, an in-place change is noticed (the check is remembered per tensor version).
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    ops.full_attention(q, k, v, cu_seqlens=cu)
    cu[1] = 11
    with pytest.raises(ValueError, match="never decrease"):
        ops.full_attention(q, k, v, cu_seqlens=cu)


@pytest.mark.parametrize("op", ["compressed_attention", "sliding_window_attention"])
def test_nsa_branches_run_per_document(op):
    cu = _cu(DOC_LENGTHS["mixed"])
    q, k, v = _qkv(int(cu[-1]), 4, 2, 8, seed=2)
    fn = getattr(ops, op)
    arg = 4 if op == "compressed_attention" else 6
    got = fn(q, k, v, arg, backend="torch", cu_seqlens=cu)
    parts = [fn(q[:, a:b], k[:, a:b], v[:, a:b], arg, backend="torch") for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    torch.testing.assert_close(got, torch.cat(parts, 1), atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# Triton kernels (interpreter on CPU) against the reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case,HQ,HK,D,s,n", [("mixed", 4, 2, 16, 8, 3), ("many_short", 8, 1, 12, 4, 9)])
def test_triton_documents_match_reference(case, HQ, HK, D, s, n):
    tri = pytest.importorskip("ssa.ops.triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cu = _cu(DOC_LENGTHS[case], device)
    T = int(cu[-1])
    q, k, v = _qkv(T, HQ, HK, D, seed=3, device=device)
    scale = D ** -0.5
    idx = tri.select_blocks(q, k, s, n, scale, cu)
    assert torch.equal(idx, reference.select_blocks(q, k, s, n, scale, cu))
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o, lse = tri.block_sparse_attention(*leaves, idx, s, scale, True, cu)
    (o * torch.linspace(-1, 1, D, device=device)).sum().backward()
    grads = [x.grad for x in leaves]
    ref_leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o_ref, lse_ref = reference.block_sparse_attention(*ref_leaves, idx, s, scale, True, cu)
    (o_ref * torch.linspace(-1, 1, D, device=device)).sum().backward()
    torch.testing.assert_close(o, o_ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, lse_ref, atol=2e-5, rtol=2e-5)
    for got, x in zip(grads, ref_leaves):
        torch.testing.assert_close(got, x.grad, atol=5e-5, rtol=5e-5)


# ----------------------------------------------------------------------------------------------
# The model: a packed batch equals its documents run one by one
# ----------------------------------------------------------------------------------------------
def _model(method, backend="torch"):
    from ssa.model.config import SSAConfig
    from ssa.model.modeling import SSAForCausalLM

    torch.manual_seed(0)
    cfg = SSAConfig(method=method, vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=48, block_size=4, block_count=2, nsa_window=5,
                    backend=backend)
    return SSAForCausalLM(cfg)


def _documents(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 61, (1, L), generator=g) for L in lengths]


@pytest.mark.parametrize("method,mode,backend", [("full", None, "torch"), ("ssa", "full", "torch"),
                                                 ("ssa", "sparse", "torch"), ("moba", None, "torch"),
                                                 ("nsa", None, "torch")])
def test_packed_batch_equals_documents_one_by_one(method, mode, backend):
    model = _model(method, backend).eval()
    lengths = [6, 1, 11, 2, 9]  # two rows of 12 + ... below: rows are cut mid-document
    docs = _documents(lengths)
    x = torch.cat(docs, 1)  # [1, 29]
    positions = torch.cat([torch.arange(L) for L in lengths])[None]
    with torch.no_grad():
        packed = model(x, position_ids=positions, attention_mode=mode).logits
        alone = [model(d, attention_mode=mode).logits for d in docs]
        # The same documents given by cu_seqlens instead of positions.
        by_cu = model(x, cu_seqlens=_cu(lengths), attention_mode=mode).logits
        packed_loss = model(x, labels=x, position_ids=positions, attention_mode=mode).ce_loss
        losses = [model(d, labels=d, attention_mode=mode).ce_loss for d in docs]
    torch.testing.assert_close(packed, torch.cat(alone, 1), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(by_cu, packed, atol=0, rtol=0)
    # The loss is the token-weighted mean of the documents' losses (a document's first token has no target).
    targets = [L - 1 for L in lengths]
    expected = sum(loss * n for loss, n in zip(losses, targets) if n) / sum(targets)
    torch.testing.assert_close(packed_loss, expected, atol=1e-5, rtol=1e-5)


def test_packed_rows_and_alignment_loss_in_training():
    model = _model("ssa").train()
    lengths = [[7, 1, 4], [3, 9]]  # two rows of 12 tokens
    docs = [_documents(row, seed=i) for i, row in enumerate(lengths)]
    x = torch.cat([torch.cat(row, 1) for row in docs])
    positions = torch.stack([torch.cat([torch.arange(L) for L in row]) for row in lengths])
    packed = model(x, labels=x, position_ids=positions, attention_mode="sparse")
    alone = [model(d, labels=d, attention_mode="sparse") for row in docs for d in row]
    flat = [L for row in lengths for L in row]
    with torch.no_grad():
        logits = model(x, position_ids=positions, attention_mode="sparse").logits
        expected_logits = torch.cat([model(d, attention_mode="sparse").logits[0] for row in docs for d in row])
    torch.testing.assert_close(logits.flatten(0, 1), expected_logits, atol=2e-5, rtol=2e-5)
    # Alignment is a mean over every element of every layer: token-weighted over the documents.
    expected = sum(o.align_loss * L for o, L in zip(alone, flat)) / sum(flat)
    torch.testing.assert_close(packed.align_loss, expected, atol=1e-6, rtol=1e-5)
    packed.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_model_rejects_cu_seqlens_that_cross_rows():
    model = _model("full").eval()
    x = torch.randint(0, 61, (2, 6))
    with pytest.raises(ValueError, match="every row boundary"):
        model(x, cu_seqlens=torch.tensor([0, 4, 12], dtype=torch.int32))


# ----------------------------------------------------------------------------------------------
# Data: `pack: documents`
# ----------------------------------------------------------------------------------------------
def test_row_positions_restart_after_eos_and_at_row_start():
    from ssa.training.data import DataSpec, row_positions

    eos = 9
    rows = torch.tensor([[1, 2, 9, 3, 9, 9, 4, 5], [6, 9, 7, 7, 7, 7, 7, 9]])
    expected = []
    for row in rows.tolist():
        pos, p = [], 0
        for i, tok in enumerate(row):
            pos.append(p)
            p = 0 if tok == eos else p + 1
        expected.append(pos)
    assert row_positions(rows, eos).tolist() == expected
    assert row_positions(rows.numpy(), eos).tolist() == expected
    with pytest.raises(ValueError, match="data.pack must be one of"):
        DataSpec.from_dict({"pack": "docs"})


def test_pretraining_presets_pack_documents():
    from ssa.training.config import load_preset

    for name in ("study", "300m", "1b"):
        assert load_preset(name)["data"]["pack"] == "documents"
    assert load_preset("tiny")["data"].get("pack", "stream") == "stream"


def test_trainer_feeds_document_positions():
    from ssa.training import trainer as T

    model = _model("ssa").eval()
    eos = 60
    rows = torch.tensor([[3, 4, eos, 5, 6, 7, eos, 8], [eos, 1, 2, 3, 4, 5, 6, 7]])
    kwargs = T._packing(rows, eos)
    with torch.no_grad():
        packed = model(rows, attention_mode="full", **kwargs).logits
        docs = [rows[:1, :3], rows[:1, 3:7], rows[:1, 7:], rows[1:, :1], rows[1:, 1:]]
        alone = [model(d, attention_mode="full").logits for d in docs]
        loss = model(rows, labels=rows, attention_mode="full", **kwargs).ce_loss
    torch.testing.assert_close(packed.flatten(0, 1), torch.cat([a[0] for a in alone]), atol=2e-5, rtol=2e-5)
    assert T._packing(rows, None) == {}
    assert math.isfinite(float(loss))


@pytest.mark.parametrize("seed", range(6))
def testcount_at_or_below_is_searchsorted(seed):
    pytest.importorskip("ssa.ops.triton")
    from ssa.ops.triton._documents import count_at_or_below

    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 40, (1,), generator=g))
    # Sorted bounds in [0, n] with repeats (empty documents) and bounds at 0 and n.
    bounds = torch.sort(torch.randint(0, n + 1, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g)).values
    bounds = torch.cat([bounds, torch.tensor([0, n])]).sort().values
    expected = torch.searchsorted(bounds, torch.arange(n), right=True)
    assert torch.equal(count_at_or_below(bounds, n), expected)


@pytest.mark.parametrize("lengths,s", [([5, 1, 0, 19, 8, 16], 8), ([0, 3, 0], 4), ([16, 16], 16),
                                       ([7, 0, 0], 1), ([1], 5), ([0, 0, 9], 3)])
def test_block_table_numbers_every_document_grid(lengths, s):
    pytest.importorskip("ssa.ops.triton")
    from ssa.ops.triton import _documents

    # The kernels run where the tensors live: CUDA natively, the CPU only under the interpreter.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cu = _cu(lengths).to(device)
    T = int(cu[-1])
    table = _documents.block_table(cu, T, s)
    starts, firsts, token_first, token_blocks = [], [], [], []
    for a, L in zip(cu[:-1].cpu().tolist(), lengths):
        first = len(starts)
        for c in range(-(-L // s)):
            starts.append(a + c * s)
            firsts.append(first)
        token_first += [first] * L
        token_blocks += [-(-L // s)] * L
    nb = table.num_blocks
    assert nb >= len(starts)
    assert table.block_starts.tolist() == starts + [T] * (nb + 1 - len(starts))
    assert table.block_first.tolist()[:len(firsts)] == firsts
    assert table.token_first.tolist() == token_first and table.token_blocks.tolist() == token_blocks
    idx = torch.randint(-1, 4, (1, T, 2, 3), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    inside = (idx >= 0) & (idx < torch.tensor(token_blocks)[None, :, None, None])
    expected = torch.where(inside, idx + torch.tensor(token_first)[None, :, None, None], -1)
    assert torch.equal(table.to_global(idx.to(device)).cpu(), expected.int())
