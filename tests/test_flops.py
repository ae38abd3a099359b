"""FLOPs per token against a hand count, and MFU / peak lookup."""

import pytest

from ssa.model import SSAConfig
from ssa.training.flops import flops_per_token, matmul_params, mfu, peak_flops


def _cfg(method="ssa", **kw):
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=4, block_size=2, block_count=1)
    base.update(kw)
    return SSAConfig(method=method, **base)


def test_flops_match_a_hand_count():
    # Per layer: q 8*8 + o 8*8 + k 8*4 + v 8*4 + gate 8*2 = 208; MLP 3*8*16 = 384. Two layers + head 8*10.
    assert matmul_params(_cfg()) == 2 * (208 + 384) + 80 == 1264
    # T=4: full causal keys 1,2,3,4 (mean 2.5); sparse with s=2, n=1: 1,2,1,2 (mean 1.5); selection
    # scores the visible blocks 1,1,2,2 (mean 1.5). Attention per layer = 3 * 4*HQ*D*keys (+ 2*HQ*D*blocks).
    dense = 6 * 1264
    assert flops_per_token(_cfg("full"), 4) == dense + 2 * 3 * 4 * 2 * 4 * 2.5
    assert flops_per_token(_cfg("moba"), 4) == dense + 2 * (3 * 4 * 2 * 4 * 1.5 + 2 * 2 * 4 * 1.5)
    assert flops_per_token(_cfg("ssa"), 4) == dense + 2 * (3 * 4 * 2 * 4 * (2.5 + 1.5) + 2 * 2 * 4 * 1.5)


def test_padding_counts_the_padded_head_and_wide_budgets_equal_full_keys():
    assert matmul_params(_cfg(pad_vocab_multiple=64)) == 2 * (208 + 384) + 8 * 64
    # A budget that covers every block: the sparse stream attends to exactly the causal keys.
    wide = _cfg("moba", block_count=50)
    full = _cfg("full", block_count=50)
    sel = 2 * 2 * 2 * 4 * sum(t // 2 + 1 for t in range(9)) / 9
    assert flops_per_token(wide, 9) == pytest.approx(flops_per_token(full, 9) + sel)


def test_mfu_and_peak_table():
    assert peak_flops("NVIDIA H200") == 989e12 and peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("some cpu") is None and peak_flops(None, 100) == 1e14
    with pytest.raises(ValueError, match="peak"):
        peak_flops("H200", 0)
    assert mfu(1e5, 1e9, 1e15, devices=2) == pytest.approx(0.05)
    assert mfu(1e5, 1e9, None) is None
