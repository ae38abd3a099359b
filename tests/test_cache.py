"""KV-cache decoding: same logits as a full forward, for every method and mode; sparse decode ops
against a brute-force float64 computation; decode reads only the selected blocks."""

import math

import pytest
import torch

from ssa.model import SSACache, SSAConfig, SSAForCausalLM
from ssa.ops.decode import (
    compressed_decode,
    full_decode,
    select_blocks_decode,
    sparse_decode,
    window_decode,
)

METHOD_MODES = [("full", "full"), ("full", "sparse"), ("moba", "sparse"), ("moba", "full"),
                ("nsa", "sparse"), ("ssa", "sparse"), ("ssa", "full")]


def tiny_model(method, seed=0, **overrides):
    torch.manual_seed(seed)
    kw = dict(method=method, vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, block_size=4, block_count=3, nsa_window=6, initializer_range=0.2)
    kw.update(overrides)
    return SSAForCausalLM(SSAConfig(**kw)).eval()


# ---------------------------------------------------------------------------------- model level


@pytest.mark.parametrize("method,mode", METHOD_MODES)
def test_token_by_token_matches_full_forward(method, mode):
    model = tiny_model(method)
    ids = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids, attention_mode=mode).logits
        cache, steps = None, []
        for t in range(ids.shape[1]):
            out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True, attention_mode=mode)
            cache = out.past_key_values
            steps.append(out.logits[:, 0])
    assert isinstance(cache, SSACache) and cache.host_lengths == [30, 30]
    torch.testing.assert_close(torch.stack(steps, 1), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method,mode", [("ssa", "sparse"), ("nsa", "sparse"), ("moba", "full")])
def test_prefill_then_chunk_then_tokens(method, mode):
    model = tiny_model(method)
    ids = torch.randint(0, 64, (1, 33), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids, attention_mode=mode).logits
        a = model(ids[:, :13], use_cache=True, attention_mode=mode)  # prefill crosses block edges
        b = model(ids[:, 13:22], past_key_values=a.past_key_values, attention_mode=mode)  # a chunk
        rest = [b]
        for t in range(22, 33):
            rest.append(model(ids[:, t:t + 1], past_key_values=rest[-1].past_key_values, attention_mode=mode))
    got = torch.cat([a.logits] + [o.logits for o in rest], 1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["sparse", "full"])
def test_left_padded_rows_match_their_own_unpadded_forward(mode):
    model = tiny_model("ssa")
    g = torch.Generator().manual_seed(3)
    long, short = torch.randint(1, 64, (1, 26), generator=g), torch.randint(1, 64, (1, 17), generator=g)
    ids = torch.cat([long, torch.cat([torch.zeros(1, 9, dtype=torch.long), short], 1)])
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    nxt = torch.randint(1, 64, (2, 6), generator=g)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True, attention_mode=mode)
        steps = [out]
        for j in range(6):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
            steps.append(model(nxt[:, j:j + 1], attention_mask=mask, past_key_values=steps[-1].past_key_values,
                               attention_mode=mode))
        for row, prompt in enumerate((long, short)):
            ref = model(torch.cat([prompt, nxt[row:row + 1]], 1), attention_mode=mode).logits[0]
            P = prompt.shape[1]
            torch.testing.assert_close(out.logits[row, -P:], ref[:P], atol=1e-5, rtol=1e-5)
            got = torch.stack([s.logits[row, 0] for s in steps[1:]])
            torch.testing.assert_close(got, ref[P:], atol=1e-5, rtol=1e-5)
    assert steps[-1].past_key_values.host_lengths == [26 + 6, 17 + 6]


def test_cache_errors_name_the_problem():
    model = tiny_model("ssa")
    ids = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
        with pytest.raises(ValueError, match="block_size"):
            model(ids[:, :1], past_key_values=cache, block_size=8)
        with pytest.raises(TypeError, match="SSACache"):
            model(ids[:, :1], past_key_values=((None,),))
        with pytest.raises(ValueError, match="left padding"):
            model(ids, attention_mask=torch.tensor([[1, 1, 0, 1, 1, 1, 1, 1, 1]]))
        with pytest.raises(ValueError, match="position_ids"):
            model(ids, use_cache=True, position_ids=torch.arange(9)[None])
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(ids, logits_to_keep=-1)
    model.train()
    with pytest.raises(ValueError, match="inference only"):
        model(ids, use_cache=True, attention_mode="full")  # SSA training computes both streams


def test_beam_reorder_moves_every_tensor():
    model = tiny_model("nsa")
    with torch.no_grad():
        cache = model(torch.randint(0, 64, (3, 10)), use_cache=True).past_key_values
    before = [(l.k.clone(), l.kbar.clone(), l.vbar.clone()) for l in cache.layers]
    cache.host_lengths = [10, 9, 8]  # pretend rows differ, to see host lengths follow the rows
    cache.reorder_cache(torch.tensor([2, 2, 0]))
    assert cache.host_lengths == [8, 8, 10]
    for (k, kbar, vbar), layer in zip(before, cache.layers):
        assert torch.equal(layer.k, k[[2, 2, 0]]) and torch.equal(layer.kbar, kbar[[2, 2, 0]])
        assert torch.equal(layer.vbar, vbar[[2, 2, 0]])


# ---------------------------------------------------------------------------------- op level


def random_cache(B, L, HQ, HK, D, s, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HQ, D, generator=g, dtype=dtype)
    k = torch.randn(B, L, HK, D, generator=g, dtype=dtype)
    v = torch.randn(B, L, HK, D, generator=g, dtype=dtype)
    nb = L // s
    kbar = k[:, : nb * s].reshape(B, nb, s, HK, D).mean(2).float()
    vbar = v[:, : nb * s].reshape(B, nb, s, HK, D).mean(2).float()
    return q, k, v, kbar, vbar


def brute_force_decode(q, k, v, length, s, n, scale):
    """One row: python loops over blocks, float64. Returns (o [HQ, D], selected sets per kv head)."""
    HQ, D = q.shape
    HK = k.shape[1]
    G = HQ // HK
    t = length - 1
    ct = t // s
    out = torch.zeros(HQ, D, dtype=torch.float64)
    selections = []
    for h in range(HK):
        kbar = [k[c * s:(c + 1) * s, h].double().mean(0) for c in range(ct)]
        score = [0.0] * ct
        for g in range(G):
            logits = [float(q[h * G + g].double() @ kb) * scale for kb in kbar]
            if logits:
                m = max(logits)
                z = sum(math.exp(x - m) for x in logits)
                for c in range(ct):
                    score[c] += math.exp(logits[c] - m) / z
        order = sorted(range(ct), key=lambda c: (-score[c], c))
        chosen = sorted(order[: n - 1] + [ct])
        selections.append(chosen)
        keys = [j for c in chosen for j in range(c * s, min((c + 1) * s, t + 1))]
        for g in range(G):
            logits = torch.stack([q[h * G + g].double() @ k[j, h].double() for j in keys]) * scale
            p = torch.softmax(logits, 0)
            out[h * G + g] = (p[:, None] * v[keys, h].double()).sum(0)
    return out, selections


@pytest.mark.parametrize("lengths", [[1, 4, 5, 37], [64, 63, 17, 2]])
def test_sparse_decode_matches_brute_force(lengths):
    B, L, HQ, HK, D, s, n = 4, 64, 6, 2, 8, 4, 3
    q, k, v, kbar, _ = random_cache(B, L, HQ, HK, D, s, seed=sum(lengths))
    lens = torch.tensor(lengths)
    o, idx = sparse_decode(q, k, v, kbar, lens, s, n, scale=0.3, backend="torch", return_indices=True)
    for b, length in enumerate(lengths):
        ref, sel = brute_force_decode(q[b], k[b], v[b], length, s, n, 0.3)
        torch.testing.assert_close(o[b], ref, atol=1e-6, rtol=1e-6)
        for h in range(HK):
            want = sel[h] + [-1] * (n - len(sel[h]))
            assert idx[b, h].tolist() == want


def test_decode_reads_only_block_means_and_selected_blocks():
    B, L, HQ, HK, D, s, n = 2, 96, 4, 1, 8, 4, 4
    q, k, v, kbar, _ = random_cache(B, L, HQ, HK, D, s, seed=5, dtype=torch.float32)
    lens = torch.tensor([90, 53])
    o, idx = sparse_decode(q, k, v, kbar, lens, s, n, backend="torch", return_indices=True)
    keep = torch.zeros(B, L, HK, dtype=torch.bool)
    for b in range(B):
        for c in idx[b, 0].tolist():
            if c >= 0:
                keep[b, c * s:(c + 1) * s] = True
    assert keep.sum() < B * L / 3  # the test means something: most of the cache is poisoned
    poison = lambda x: torch.where(keep[..., None], x, torch.full_like(x, float("nan")))  # noqa: E731
    o2 = sparse_decode(q, poison(k), poison(v), kbar, lens, s, n, backend="torch")
    torch.testing.assert_close(o2, o)


def test_select_blocks_decode_ties_go_to_lower_block():
    # Identical block means: every candidate scores the same, so the lowest blocks win.
    q = torch.randn(1, 2, 4)
    kbar = torch.ones(1, 10, 1, 4)
    idx = select_blocks_decode(q, kbar, torch.tensor([38]), block_size=4, block_count=4)
    assert idx[0, 0].tolist() == [0, 1, 2, 9]


def test_full_window_compressed_decode_match_dense_formulas():
    B, L, HQ, HK, D, s = 2, 40, 4, 2, 8, 4
    q, k, v, kbar, vbar = random_cache(B, L, HQ, HK, D, s, seed=7)
    lens = torch.tensor([40, 23])
    full, win, comp = full_decode(q, k, v, lens), window_decode(q, k, v, lens, window=6), compressed_decode(
        q, kbar, vbar, lens, block_size=s)
    for b, n in enumerate(lens.tolist()):
        for h in range(HQ):
            kh = h // (HQ // HK)
            logits = k[b, :n, kh] @ q[b, h] / math.sqrt(D)
            torch.testing.assert_close(full[b, h], torch.softmax(logits, 0) @ v[b, :n, kh])
            w0 = max(0, n - 6)
            torch.testing.assert_close(win[b, h], torch.softmax(logits[w0:], 0) @ v[b, w0:n, kh])
            ct = (n - 1) // s
            pc = torch.softmax(kbar[b, :ct, kh].double() @ q[b, h] / math.sqrt(D), 0)
            torch.testing.assert_close(comp[b, h], pc @ vbar[b, :ct, kh].double())


def test_decode_op_argument_errors():
    q, k, v, kbar, _ = random_cache(1, 16, 2, 1, 4, 4, dtype=torch.float32)
    lens = torch.tensor([16])
    with pytest.raises(ValueError, match="block_count must be an int >= 1"):
        sparse_decode(q, k, v, kbar, lens, 4, 0)
    with pytest.raises(ValueError, match="backend must be one of"):
        sparse_decode(q, k, v, kbar, lens, 4, 2, backend="cuda")
    with pytest.raises(ValueError, match=r"q must have shape \[batch, q_heads, dim\] or \[batch, new_tokens"):
        sparse_decode(q[None, None], k, v, kbar, lens)
    with pytest.raises(ValueError, match="lengths must be >= 1"):
        sparse_decode(q, k, v, kbar, torch.tensor([0]))
    with pytest.raises(ValueError, match="lengths reach 17 but the cache holds 16 slots"):
        full_decode(q, k, v, torch.tensor([17]))
    with pytest.raises(ValueError, match="k_cache holds 16 entries but lengths need 17"):
        full_decode(q, k, v, lens, max_length=17)
    with pytest.raises(ValueError, match="lengths must be >= 3"):  # three new queries need three cached tokens
        full_decode(q[:, None].expand(1, 3, 2, 4), k, v, torch.tensor([2]))
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        full_decode(q, k, v, torch.tensor([3.0]))


def test_right_padding_without_cache_is_a_plain_forward():
    # Causal attention never looks right, so right-padded rows keep their real tokens' logits
    # (what an evaluation harness passes); left padding goes through the per-row cache path.
    model = tiny_model("ssa")
    ids = torch.randint(1, 64, (2, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        plain = model(ids).logits
        padded = model(ids, attention_mask=mask).logits
        with pytest.raises(ValueError, match="left padding"):
            model(ids, attention_mask=mask, use_cache=True)
    torch.testing.assert_close(padded, plain)
