"""Triton kernels against the reference: selected indices, forward output, lse, dq, dk, dv.

Without a GPU the kernels run under Triton's CPU interpreter (TRITON_INTERPRET=1, set here before
Triton is imported, for this process). On a CUDA machine the same tests run the compiled kernels.
Shapes are small because the interpreter executes every tile operation in NumPy.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from ssa.ops import api, reference  # noqa: E402

tri = pytest.importorskip("ssa.ops.triton")
from ssa.ops.triton import _attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _qkv(B, T, HQ, HK, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, h, D, generator=g) for h in (HQ, HK, HK))
    return [x.to(DEVICE, dtype) for x in (q, k, v)]


# ----------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------


def _reference_scores(q, k, s, scale):
    """Group scores [B, T, HK, nb] (float32) of docs/design.md §1.1, from the reference's own helper."""
    kbar = reference.block_means(k, s)
    score, _, _ = reference.block_scores(q, kbar, 0, s, scale)
    return score


def _check_selection(got, q, k, s, n, scale, tol):
    """`got` must equal the reference except for swaps between blocks whose reference scores differ
    by less than `tol` (float rounding); every row must be a valid selection either way."""
    want = reference.select_blocks(q, k, s, n, scale)
    assert got.shape == want.shape and got.dtype == torch.int32
    differ = (got != want).any(-1)
    if not differ.any():
        return 0
    score = _reference_scores(q.float(), k.float(), s, scale).cpu()
    B, T, HK, _ = got.shape
    for b, t, h in differ.nonzero().tolist():
        g_row, w_row = got[b, t, h].cpu(), want[b, t, h].cpu()
        cur = t // s
        valid = g_row[g_row >= 0]
        # Same shape of answer: ascending, -1 last, own block in, same number of valid slots.
        assert (g_row[: len(valid)] >= 0).all() and (g_row[len(valid):] == -1).all(), g_row
        assert (valid[1:] > valid[:-1]).all(), g_row
        assert cur in valid.tolist() and len(valid) == (w_row >= 0).sum()
        extra = set(valid.tolist()) - set(w_row.tolist())
        missing = set(w_row[w_row >= 0].tolist()) - set(valid.tolist())
        sc = score[b, t, h]
        worst_pick = min(sc[c].item() for c in extra)
        best_left = max(sc[c].item() for c in missing)
        assert best_left - worst_pick <= tol, (b, t, h, sorted(extra), sorted(missing), best_left - worst_pick)
    return int(differ.sum())


SELECT_CASES = [
    # B, T, HQ, HK, D, s, n, dtype
    (2, 150, 4, 2, 32, 16, 4, torch.float32),  # G=2, batch 2, T % s != 0
    (1, 200, 2, 2, 64, 16, 20, torch.float32),  # G=1, n > s and n > number of blocks
    (1, 130, 8, 1, 32, 16, 6, torch.float32),  # G=8
    (1, 120, 6, 2, 32, 8, 5, torch.float32),  # G=3 (padded group), s=8
    (1, 200, 4, 1, 32, 4, 7, torch.float32),  # 50 blocks: several top-k tiles, merges and skips
    (1, 199, 2, 1, 32, 5, 3, torch.float32),  # block size not a power of two
    (1, 200, 4, 2, 128, 32, 3, torch.float32),  # D=128, s=32
    (1, 200, 4, 1, 64, 2, 128, torch.float32),  # n=128, 100 blocks
    (2, 160, 4, 1, 64, 4, 5, torch.bfloat16),
    (1, 160, 4, 2, 64, 4, 5, torch.float16),
]


# Launch settings besides the default: 16-row programs (4 queries per program at G=4, so programs
# are block-uniform at s=4: unmasked tiles and a masked tail) and 16-block tiles.
SMALL_LAUNCH = dict(rows=16, block_tile=16)


@pytest.mark.parametrize("B,T,HQ,HK,D,s,n,dtype", SELECT_CASES)
def test_select_blocks_matches_reference(B, T, HQ, HK, D, s, n, dtype):
    q, k, _ = _qkv(B, T, HQ, HK, D, dtype, seed=T + n)
    scale = D ** -0.5
    got = tri.select_blocks(q, k, s, n, scale)
    # Scores lie in [0, G]; fp32 inputs agree to float rounding, half inputs to the ~2^-16 accuracy of
    # the split block keys.
    G = HQ // HK
    tol = G * (2e-6 if dtype == torch.float32 else 2e-5)
    mismatched = _check_selection(got, q, k, s, n, scale, tol)
    assert mismatched <= max(2, got.shape[0] * got.shape[1] * got.shape[2] // 100)


@pytest.mark.parametrize("pattern", ["zero_keys", "unit_keys", "every_third"])
def test_select_blocks_ties_go_to_lower_block(pattern):
    # Ties that are real, not ties up to rounding. zero_keys: every logit is exactly 0. unit_keys: keys
    # of all ones and small-integer queries, so every block's logit is the same exact integer.
    # every_third: blocks whose index is a multiple of 3 have zero keys and tie; the others have keys
    # of -1 against strictly positive integer queries and score strictly lower. The exact top-k takes
    # the tied blocks lowest first, then (when too few are candidates) others, and always the own
    # block; checked against the closed form and the reference on the CPU.
    B, T, HQ, HK, D, s, n = 1, 120, 4, 2, 32, 4, 6
    g = torch.Generator().manual_seed(0)
    low = -3 if pattern == "unit_keys" else 1
    q = torch.randint(low, 4, (B, T, HQ, D), generator=g).float().to(DEVICE)
    tied_every = 3 if pattern == "every_third" else 1
    tied = (torch.arange(T) // s) % tied_every == 0
    key = 1.0 if pattern == "unit_keys" else 0.0
    k = torch.where(tied[None, :, None, None], key, -1.0).expand(B, T, HK, D).contiguous().to(DEVICE)
    scale = 0.25
    got = tri.select_blocks(q, k, s, n, scale).cpu()
    ref = reference.select_blocks(q.cpu(), k.cpu(), s, n, scale)
    for t in range(T):
        own = t // s
        ties = [c for c in range(own) if c % tied_every == 0]
        chosen = ties[: n - 1]
        for row in (got[0, t], ref[0, t]):
            for h in range(HK):
                picked = [c for c in row[h].tolist() if c >= 0]
                assert own in picked and len(picked) == len(set(picked)) == min(n, own + 1), (t, h, picked)
                assert set(chosen) <= set(picked) and max(picked[:-1], default=-1) < own, (t, h, picked)
        if len(ties) >= n - 1 or tied_every == 1:  # the whole selection is determined
            want = torch.tensor(chosen + [own] + [-1] * (n - 1 - len(chosen)), dtype=torch.int32)
            assert torch.equal(got[0, t], want.expand(HK, n)) and torch.equal(ref[0, t], want.expand(HK, n)), t


@pytest.mark.parametrize("launch", [{}, SMALL_LAUNCH])
@pytest.mark.parametrize("n", [2, 4])
def test_select_blocks_group_scores_above_two(launch, n):
    # A group of 16 heads with one KV head: rows with few candidates have group scores up to 16, and a
    # score >= 2.0 has float bits >= 0x40000000, so its top-k key reaches 2^62. The buffer padding must
    # sit above every key; at 2^62 it became the "K-th best", so later tiles overwrote the padding
    # slots and rows 32-47 came back as [0, 0] or [0, 1] instead of holding their own block 2.
    from ssa.ops.triton import _select

    B, T, HQ, HK, D, s = 1, 48, 16, 1, 16, 16
    q, k, _ = _qkv(B, T, HQ, HK, D, torch.float32)
    got = _select.select_blocks(q, k, s, n, D ** -0.5, launch=_select.SelectLaunch(**launch))
    own = (torch.arange(T, device=got.device) // s)[None, :, None, None]
    assert ((got == own).sum(-1) == 1).all()  # own block exactly once
    assert _check_selection(got, q, k, s, n, D ** -0.5, 16 * 2e-6) == 0 or DEVICE == "cuda"


def test_select_blocks_through_dispatch():
    q, k, _ = _qkv(1, 90, 4, 2, 32, torch.float32, seed=3)
    got = api.select_blocks(q, k, block_size=16, block_count=3, backend="triton")
    _check_selection(got, q, k, 16, 3, 32 ** -0.5, 4e-6)


# ----------------------------------------------------------------------------------------------
# Block-sparse attention, forward and backward
# ----------------------------------------------------------------------------------------------


def _random_indices(B, T, HK, n, s, seed):
    """Messy but legal indices: unsorted, with -1 holes in the middle, blocks past the query
    (masked by causality), duplicates avoided, the own block sometimes missing."""
    g = torch.Generator().manual_seed(seed)
    nb = -(-T // s)
    idx = torch.stack([torch.randperm(nb, generator=g)[:n] for _ in range(B * T * HK)]).view(B, T, HK, -1)
    if idx.shape[-1] < n:
        idx = torch.cat([idx, torch.full((B, T, HK, n - idx.shape[-1]), -1)], -1)
    holes = torch.rand(idx.shape, generator=g) < 0.2
    idx = torch.where(holes, -1, idx)
    idx[..., 0] = (torch.arange(T) // s)[None, :, None]  # keep every query non-empty
    return idx.to(torch.int32).to(DEVICE)


def _run(fn, q, k, v, idx, s, scale, do, dlse):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    o, lse = fn(q, k, v, idx, s, scale, True)
    loss = (o.float() * do).sum() + (lse * dlse).sum()
    loss.backward()
    return o, lse, q.grad, k.grad, v.grad


def _run_kernels(q, k, v, idx, s, scale, do, dlse, seg):
    """o, lse, dq, dk, dv straight from the kernel launchers, with `seg` queries per dk/dv work item."""
    o, lse = _attention.sparse_forward(q, k, v, idx, s, scale)
    dq, dk, dv = _attention.sparse_backward(do.to(q.dtype), q, k, v, o, lse, dlse, idx, s, scale, seg=seg)
    return o, lse, dq, dk, dv


def _close(name, got, want, rtol, atol):
    got, want = got.float().cpu(), want.float().cpu()
    err = (got - want).abs()
    bound = atol + rtol * want.abs()
    assert torch.isfinite(got).all(), name
    assert (err <= bound).all(), f"{name}: max abs err {err.max():.3g}, worst excess {(err - bound).max():.3g}"


ATTN_CASES = [
    # B, T, HQ, HK, D, s, n, dtype, indices
    (2, 77, 2, 1, 32, 16, 3, torch.float32, "select"),  # batch 2, G=2, T % s != 0
    (1, 100, 2, 2, 64, 32, 2, torch.float32, "select"),  # G=1, s=32
    (1, 64, 8, 1, 128, 16, 3, torch.float32, "random"),  # G=8, D=128
    (1, 50, 3, 1, 32, 16, 2, torch.float32, "random"),  # G=3 (padded group)
    (1, 150, 2, 1, 32, 64, 2, torch.float32, "select"),  # s=64
    (1, 70, 2, 1, 32, 16, 20, torch.float32, "select"),  # n > number of blocks
    (1, 90, 2, 1, 32, 8, 4, torch.float32, "random"),  # s=8 (padded key tile)
    (2, 96, 4, 1, 64, 16, 4, torch.bfloat16, "select"),
    (1, 80, 4, 2, 64, 16, 3, torch.float16, "random"),
]


@pytest.mark.parametrize("B,T,HQ,HK,D,s,n,dtype,indices", ATTN_CASES)
def test_block_sparse_attention_matches_reference(B, T, HQ, HK, D, s, n, dtype, indices):
    q, k, v = _qkv(B, T, HQ, HK, D, dtype, seed=B * T + D)
    scale = D ** -0.5
    if indices == "select":
        idx = reference.select_blocks(q, k, s, n, scale)
    else:
        idx = _random_indices(B, T, HK, n, s, seed=T)
    g = torch.Generator().manual_seed(1)
    do = torch.randn(B, T, HQ, D, generator=g).to(DEVICE)
    dlse = torch.randn(B, T, HQ, generator=g).to(DEVICE)  # a gradient through lse as well
    got = _run(tri.block_sparse_attention, q, k, v, idx, s, scale, do, dlse)
    # The reference in float32 on the same (rounded) inputs is the target.
    want = _run(reference.block_sparse_attention, q.float(), k.float(), v.float(), idx, s, scale, do, dlse)
    if dtype == torch.float32:
        tol = dict(rtol=1e-4, atol=1e-4)
    else:  # p and dS are rounded to half precision before the products, as in flash attention
        tol = dict(rtol=3e-2, atol=3e-2)
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), got, want):
        _close(name, a, b, **tol)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    assert got[2].dtype == dtype and got[3].dtype == dtype and got[4].dtype == dtype


def test_unselected_blocks_get_exactly_zero_gradient():
    # Queries select their own block and block 0, except those of the last block, which select only
    # block 0: nobody reads the last block, so its keys and values must get exactly zero gradient.
    B, T, HQ, HK, D, s = 1, 96, 2, 1, 32, 16
    q, k, v = _qkv(B, T, HQ, HK, D, torch.float32, seed=5)
    cur = (torch.arange(T, device=DEVICE) // s)[None, :, None, None]
    idx = torch.cat([torch.zeros_like(cur), cur], -1).to(torch.int32)
    idx[:, :s, :, 1] = -1
    idx[:, -s:, :, 1] = -1
    k.requires_grad_()
    v.requires_grad_()
    tri.block_sparse_attention(q, k, v, idx, s, D ** -0.5).square().sum().backward()
    assert (k.grad[:, -s:] == 0).all() and (v.grad[:, -s:] == 0).all()
    assert (k.grad[:, :-s] != 0).any(-1).all() and (v.grad[:, :-s] != 0).any(-1).all()


def test_long_query_lists_are_split_across_programs():
    # Every query selects block 0, so its list is T long; a tiny segment length forces many work
    # items for that block whose partial dk/dv meet through atomic adds.
    B, T, HQ, HK, D, s = 1, 100, 4, 2, 32, 16
    q, k, v = _qkv(B, T, HQ, HK, D, torch.float32, seed=7)
    cur = (torch.arange(T, device=DEVICE) // s)[None, :, None, None].expand(B, T, HK, 1)
    idx = torch.cat([torch.zeros_like(cur), cur], -1).to(torch.int32)
    idx[:, :s, :, 1] = -1
    do = torch.randn(B, T, HQ, D).to(DEVICE)
    dlse = torch.zeros(B, T, HQ).to(DEVICE)
    got = _run_kernels(q, k, v, idx, s, D ** -0.5, do, dlse, seg=4)
    want = _run(reference.block_sparse_attention, q, k, v, idx, s, D ** -0.5, do, dlse)
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), got, want):
        _close(name, a, b, rtol=1e-4, atol=1e-4)


def test_inverted_index_lists_exactly_the_selecting_queries():
    from ssa.ops.triton import _index

    B, T, HK, n, s = 2, 70, 2, 3, 8
    idx = _random_indices(B, T, HK, n, s, seed=11)
    qlist, key, start, end, num_keys = _index.inverted_index(idx, T, s, seg=5)
    nb = -(-T // s)
    seen = {}
    for w in range(key.numel()):
        kk = int(key[w])
        if kk >= num_keys:
            continue
        assert 0 < int(end[w]) - int(start[w]) <= 5
        seen.setdefault(kk, []).extend(qlist[int(start[w]):int(end[w])].tolist())
    for b in range(B):
        for h in range(HK):
            for c in range(nb):
                want = sorted(t for t in range(T) for j in range(n) if int(idx[b, t, h, j]) == c)
                assert sorted(seen.get((b * HK + h) * nb + c, [])) == want


def test_dispatch_and_fallbacks():
    q, k, v = _qkv(1, 64, 2, 1, 32, torch.float32, seed=2)
    got = api.block_sparse_attention(q, k, v, block_size=16, block_count=2, backend="triton")
    want = api.block_sparse_attention(q, k, v, block_size=16, block_count=2, backend="torch")
    _close("o", got, want, rtol=1e-4, atol=1e-4)
    # float64 has no kernel: the Triton entry points hand it to the reference.
    q64, k64, v64 = (x.double() for x in (q, k, v))
    idx = reference.select_blocks(q64, k64, 16, 2, 0.2)
    assert torch.equal(tri.select_blocks(q64, k64, 16, 2, 0.2), idx)
    o64 = tri.block_sparse_attention(q64, k64, v64, idx.long(), 16, 0.2)
    assert o64.dtype == torch.float64


def test_torch_compile_traces_the_custom_ops():
    B, T, HQ, HK, D, s, n = 1, 64, 4, 2, 32, 16, 2
    q, k, v = _qkv(B, T, HQ, HK, D, torch.float32, seed=4)

    def step(q, k, v):
        idx = tri.select_blocks(q, k, s, n, D ** -0.5)
        o, lse = tri.block_sparse_attention(q, k, v, idx, s, D ** -0.5, True)
        return o.square().sum() + lse.sum()

    # aot_eager traces forward and backward graphs through the fake implementations without needing
    # a C++ or GPU compiler; on a GPU the default inductor backend is used.
    backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    grads = []
    for fn in (step, compiled):
        xs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        fn(*xs).backward()
        grads.append([x.grad for x in xs])
    for a, b in zip(*grads):
        _close("grad", a, b, rtol=1e-5, atol=1e-5)


def test_registered_ops_pass_opcheck():
    B, T, HQ, HK, D, s = 1, 40, 2, 1, 32, 16
    q, k, v = _qkv(B, T, HQ, HK, D, torch.float32, seed=6)
    idx = reference.select_blocks(q, k, s, 2, 0.2)
    q.requires_grad_()
    torch.library.opcheck(
        torch.ops.ssa.sparse_attention_fwd_triton.default, (q, k, v, idx, s, 0.2),
        test_utils=("test_schema", "test_faketensor"),
    )
    torch.library.opcheck(
        torch.ops.ssa.select_blocks_triton.default, (q.detach(), k, s, 2, 0.2),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_backward_with_expanded_output_gradient():
    # o.sum() sends an expanded (all strides 0) gradient into the backward op.
    q, k, v = _qkv(1, 48, 2, 1, 32, torch.float32, seed=8)
    idx = reference.select_blocks(q, k, 16, 2, 0.2)
    grads = []
    for fn in (tri.block_sparse_attention, reference.block_sparse_attention):
        xs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        fn(*xs, idx, 16, 0.2).sum().backward()
        grads.append([x.grad for x in xs])
    for a, b in zip(*grads):
        _close("grad", a, b, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# NSA branches (fast versions used by the dispatch on GPU)
# ----------------------------------------------------------------------------------------------


def _grads(fn, q, k, v, do):
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    o = fn(*xs)
    (o.float() * do).sum().backward()
    return [o] + [x.grad for x in xs]


@pytest.mark.parametrize("T,HQ,HK,window,dtype", [
    (120, 2, 1, 80, torch.float32),  # window spans up to three 64-key blocks
    (70, 4, 2, 20, torch.float32),  # window shorter than a key block, G=2
    (50, 2, 1, 1, torch.float32),  # each query sees only itself
    (90, 2, 1, 70, torch.bfloat16),
])
def test_sliding_window_attention_matches_reference(T, HQ, HK, window, dtype):
    q, k, v = _qkv(1, T, HQ, HK, 32, dtype, seed=T + window)
    do = torch.randn(1, T, HQ, 32, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    got = _grads(lambda *x: tri.sliding_window_attention(*x, window, 0.2), q, k, v, do)
    want = _grads(lambda *x: reference.sliding_window_attention(*x, window, 0.2),
                  q.float(), k.float(), v.float(), do)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        _close(name, a, b, **tol)


@pytest.mark.parametrize("T,HQ,HK,s,dtype", [
    (100, 4, 2, 16, torch.float32),  # T % s != 0: the partial block is never attended
    (64, 2, 1, 8, torch.bfloat16),
    (10, 2, 1, 16, torch.float32),  # no complete block: all zeros
])
def test_compressed_attention_matches_reference(T, HQ, HK, s, dtype):
    q, k, v = _qkv(2, T, HQ, HK, 32, dtype, seed=T + s)
    do = torch.randn(2, T, HQ, 32, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    got = _grads(lambda *x: tri.compressed_attention(*x, s, 0.2), q, k, v, do)
    want = _grads(lambda *x: reference.compressed_attention(*x, s, 0.2), q.float(), k.float(), v.float(), do)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        _close(name, a, b, **tol)
    assert (got[0][:, :s] == 0).all()  # first-block queries have nothing to attend to


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_bench_command_needs_a_gpu(capsys):
    from ssa.cli import main

    assert main(["bench", "attention", "--seq-lens", "4096"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Launch settings and code paths that the default shapes do not reach
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_with_short_work_items(dtype):
    # The dq kernel counts the selections; scan and scatter+items kernels build the index. Tiny
    # segments force split lists.
    B, T, HQ, HK, D, s, n = 2, 70, 4, 2, 32, 8, 3
    q, k, v = _qkv(B, T, HQ, HK, D, dtype, seed=12)
    idx = _random_indices(B, T, HK, n, s, seed=12)
    g = torch.Generator().manual_seed(2)
    do = torch.randn(B, T, HQ, D, generator=g).to(DEVICE)
    dlse = torch.randn(B, T, HQ, generator=g).to(DEVICE)
    got = _run_kernels(q, k, v, idx, s, D ** -0.5, do, dlse, seg=4)
    want = _run(reference.block_sparse_attention, q.float(), k.float(), v.float(), idx, s, D ** -0.5, do, dlse)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), got, want):
        _close(name, a, b, **tol)


@pytest.mark.parametrize("rows,block_tile", [(16, 16), (128, 64), (16, 32)])
def test_select_launch_settings_match_reference(rows, block_tile):
    # rows=16: 4 queries per program at G=4, block-uniform at s=4 (unmasked tiles + a masked tail);
    # rows=128 at s=4 is not block-uniform (every tile masked). The cases cover padded groups,
    # fp16's three-part keys and T % s != 0.
    from ssa.ops.triton import _select

    launch = _select.SelectLaunch(rows=rows, block_tile=block_tile)
    for B, T, HQ, HK, D, s, n, dtype in [(1, 100, 8, 2, 32, 4, 7, torch.float32),
                                         (2, 70, 4, 1, 64, 4, 5, torch.bfloat16),
                                         (1, 67, 6, 2, 32, 8, 4, torch.float16)]:
        q, k, _ = _qkv(B, T, HQ, HK, D, dtype, seed=T)
        got = _select.select_blocks(q, k, s, n, D ** -0.5, launch=launch)
        G = HQ // HK
        _check_selection(got, q, k, s, n, D ** -0.5, G * (2e-6 if dtype == torch.float32 else 2e-5))


def test_select_launch_rejects_bad_settings():
    import dataclasses

    from ssa.ops.triton import _select

    for bad in (dict(rows=100), dict(block_tile=8), dict(num_warps=3), dict(num_stages=0), dict(maxnreg=0)):
        with pytest.raises(ValueError, match=f"SelectLaunch.{next(iter(bad))}"):
            _select.SelectLaunch(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        _select.DEFAULT_LAUNCH.rows = 64


def test_select_loose_shift_bound_falls_back():
    # q has a huge component along a direction the block keys never have, so the Cauchy-Schwarz
    # shift is thousands above every logit and every exp2 of pass 1 underflows to zero. Without
    # the recomputation with the online maximum every score would be 0 and the lowest blocks win.
    from ssa.ops.triton import _select

    B, T, HQ, HK, D, s, n = 1, 160, 4, 1, 32, 4, 5
    q, k, _ = _qkv(B, T, HQ, HK, D, torch.float32, seed=5)
    q[..., 0] = 400.0
    k = k * 50.0
    k[..., 0] = 0.0
    got = _select.select_blocks(q, k, s, n, D ** -0.5, launch=_select.SelectLaunch(**SMALL_LAUNCH))
    mismatched = _check_selection(got, q, k, s, n, D ** -0.5, 4 * 2e-6)
    assert mismatched == 0
    lowest = torch.arange(n - 1, dtype=torch.int32, device=got.device)
    assert not (got[0, -1, 0, : n - 1] == lowest).all()  # the answer is not the all-zero-score one


@pytest.mark.skipif(not torch.cuda.is_available(), reason="launch shape of the benchmark: too slow to interpret")
@pytest.mark.parametrize("block_tile,maxnreg", [(32, 128), (32, 96), (64, None)])
def test_select_benchmark_shape(block_tile, maxnreg):
    from ssa.ops.triton import _select

    launch = _select.SelectLaunch(block_tile=block_tile, maxnreg=maxnreg)
    q, k, _ = _qkv(1, 3000, 16, 1, 64, torch.bfloat16, seed=7)
    got = _select.select_blocks(q, k, 16, 16, 0.125, launch=launch)
    assert _check_selection(got, q, k, 16, 16, 0.125, 16 * 2e-5) <= 30


def test_select_periodic_ties_match_reference():
    # Block c repeats the keys of block c % 3, so every score ties with those of a third of the blocks,
    # inside one tile and across tiles: the exact top-k must keep the lowest block of each tie, as
    # the reference's stable sort does (the float insertion's strict test relies on this order).
    from ssa.ops.triton import _select

    B, T, HQ, HK, D, s, n = 1, 230, 4, 1, 32, 4, 9
    q, k, _ = _qkv(B, T, HQ, HK, D, torch.float32, seed=21)
    blocks = k[:, : 3 * s].reshape(B, 3, s, HK, D)
    k = blocks.repeat(1, T // (3 * s) + 1, 1, 1, 1).reshape(B, -1, HK, D)[:, :T].contiguous()
    launch = _select.SelectLaunch(**SMALL_LAUNCH)
    assert torch.equal(_select.select_blocks(q, k, s, n, D ** -0.5, launch=launch),
                       reference.select_blocks(q, k, s, n, D ** -0.5))


def test_block_keys_and_bound_match_the_block_means():
    # The prologue of the selection kernel: parts of each block mean (hi, lo, ...) in k's
    # dtype that sum to the float32 mean, and factor * the largest mean norm, against block_means.
    from ssa.ops.triton import _select

    for dtype, nsplit, tol in ((torch.float32, 1, 1e-6), (torch.bfloat16, 2, 2e-5), (torch.float16, 3, 1e-6)):
        _, k, _ = _qkv(2, 70, 3, 3, 40, dtype, seed=4)
        kb, kn = _select.block_keys_and_bound(k, 8, nsplit, 2.0)
        want = reference.block_means(k.float(), 8)[:, :8]  # complete blocks only: [B, 8, HK, D]
        assert kb.shape == (2, 3, nsplit, 8, 40) and kb.dtype == dtype
        got = kb.float().sum(2).permute(0, 2, 1, 3)
        assert (got - want).abs().max().item() <= tol * want.abs().max().item()
        norm = 2.0 * want.norm(dim=-1).amax(1).reshape(-1)
        assert torch.allclose(kn, norm, rtol=1e-5, atol=0)
