"""The released code's block-selection normalisation, as a benchmark-only variant of the reference.

The library scores block c for query t with each head's softmax over the candidates c < t // s
(the complete blocks before the query's own). The released code reuses the softmax of its NSA
compression branch, which runs over c < (t + 1) // s: at the last position of a block that block is
complete and joins the denominator, though it is never a candidate (it is forced). Each head's
probabilities then shrink by its own factor, so the group sum can rank the candidates differently.

`select_blocks_released_rule` is the library's exact top-k with only that denominator changed; it
lets a benchmark measure what the rule alone changes (docs/conversion.md).

    python benchmarks/selection_rule.py --out results_dir     # random q/k and a converted random checkpoint
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ssa.ops.reference import block_means, top_blocks


def select_blocks_released_rule(q, k, block_size: int, block_count: int, scale: float | None = None):
    """int32 [B, T, HK, block_count] like `ssa.ops.select_blocks`, softmax denominator over c < (t+1)//s."""
    B, T, HQ, D = q.shape
    HK = k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    kbar = block_means(k, block_size)
    nb = kbar.shape[1]
    t = torch.arange(T, device=q.device)
    blocks = torch.arange(nb, device=q.device)
    current = t // block_size
    in_softmax = blocks[None, :] < ((t + 1) // block_size)[:, None]  # [T, nb]
    candidate = blocks[None, :] < current[:, None]
    logits = torch.einsum("bthgd,bnhd->bthgn", q.to(kbar.dtype).view(B, T, HK, HQ // HK, D), kbar) * scale
    logits = logits.masked_fill(~in_softmax[None, :, None, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    score = torch.where(candidate[None, :, None, :], probs.sum(3), torch.full((), -1.0, dtype=probs.dtype))
    is_current = (blocks[None, :] == current[:, None])[None, :, None, :]
    return top_blocks(score, is_current, block_count)


def rows_that_differ(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of (batch, query, kv-head) rows whose selected sets differ (both index layouts sorted)."""
    return (a.sort(-1).values != b.sort(-1).values).any(-1).float().mean().item()


def random_qk_agreement(T=1024, HQ=16, HK=1, D=64, s=16, n=16, seed=0, device="cpu"):
    from ssa import ops

    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(1, T, HQ, D, generator=g, device=device)
    k = torch.randn(1, T, HK, D, generator=g, device=device)
    ours = ops.select_blocks(q, k, s, n, D ** -0.5, backend="torch")
    return rows_that_differ(ours, select_blocks_released_rule(q, k, s, n))


def sparse_logits_with_rule(model, ids, rule):
    """Sparse-mode logits of `model` with the library's selection or the released rule."""
    from ssa import ops

    original = ops.select_blocks
    def released(q, k, s, n, scale, backend="auto", cu_seqlens=None, **unused):
        if cu_seqlens is not None:
            raise ValueError("the released-rule variant scores one sequence per row (no cu_seqlens)")
        return select_blocks_released_rule(q, k, s, n, scale)

    if rule == "released":
        ops.select_blocks = released
    try:
        with torch.no_grad():
            return model(ids, attention_mode="sparse").logits.float()
    finally:
        ops.select_blocks = original


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--model", type=Path, help="a converted checkpoint (default: none, random q/k only)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"random_qk_rows_differ": {f"n={n}": random_qk_agreement(T=args.seq, n=n, device=device) for n in (2, 4, 8, 16)}}
    if args.model:
        from ssa.model import SSAForCausalLM

        model = SSAForCausalLM.from_pretrained(args.model).to(device).eval()
        ids = torch.randint(0, model.config.vocab_size, (2, args.seq), generator=torch.Generator().manual_seed(0)).to(device)
        ours, released = (sparse_logits_with_rule(model, ids, r) for r in ("library", "released"))
        with torch.no_grad():
            full = model(ids, attention_mode="full").logits.float()
        result["model"] = {
            "max_abs_logit_change": (ours - released).abs().max().item(),
            "mean_abs_logit_change": (ours - released).abs().mean().item(),
            "max_abs_sparse_vs_full": (ours - full).abs().max().item(),
        }
    (args.out / "selection_rule.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
