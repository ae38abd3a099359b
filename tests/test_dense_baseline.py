"""The dense baselines of `ssa bench`: every variant computes the same attention, the fastest wins."""

import torch

from ssa.commands.bench import dense_variants, fastest_dense


def brute_force(q, k, v, scale, causal, lengths=None):
    B, T, HQ, D = q.shape
    L, HK = k.shape[1], k.shape[2]
    out = torch.zeros(B, T, HQ, D, dtype=torch.float64)
    for b in range(B):
        for h in range(HQ):
            kh = k[b, :, h // (HQ // HK)].double()
            for t in range(T):
                n = (L - T + t + 1) if causal else (L if lengths is None else lengths[b])
                p = torch.softmax(q[b, t, h].double() @ kh[:n].T * scale, 0)
                out[b, t, h] = p @ v[b, :n, h // (HQ // HK)].double()
    return out


def test_dense_variants_agree_and_fastest_is_the_minimum():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 9, 6, 8, generator=g), torch.randn(2, 9, 2, 8, generator=g), torch.randn(2, 9, 2, 8, generator=g)
    variants = dense_variants(q, k, v, 0.3)
    assert set(variants) == {"sdpa-default/gqa", "sdpa-default/expanded"}  # CPU: the default dispatch only
    for fn in variants.values():
        torch.testing.assert_close(fn().double(), brute_force(q, k, v, 0.3, True), atol=1e-5, rtol=1e-5)
    fake = {"sdpa-default/gqa": 3.0, "sdpa-default/expanded": 2.0}
    best, ms, times = fastest_dense(variants, lambda fn: fake[next(n for n, f in variants.items() if f is fn)])
    assert (best, ms, times) == ("sdpa-default/expanded", 2.0, fake)


def test_dense_decode_variant_with_length_mask():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 1, 4, 8, generator=g), torch.randn(2, 12, 1, 8, generator=g), torch.randn(2, 12, 1, 8, generator=g)
    lengths = torch.tensor([12, 7])
    mask = (torch.arange(12)[None] < lengths[:, None])[:, None, None, :]
    for fn in dense_variants(q, k, v, 0.5, causal=False, attn_mask=mask).values():
        torch.testing.assert_close(fn().double(), brute_force(q, k, v, 0.5, False, lengths.tolist()), atol=1e-5, rtol=1e-5)
