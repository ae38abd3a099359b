"""Triton selection against the reference at small budgets, natively, on one long sequence.

For each budget and dtype: rows (query x KV head) whose selected set differs from the reference,
rows holding a block twice, rows missing their own block, and rows that differ by more than a
near-tie swap (the largest score gap between a block taken and a block left, over the tolerance).
A correct kernel has 0 in the last three columns; a few rounding swaps between near-tied blocks
may show in the first.

    PYTHONPATH=src python benchmarks/select_budget_check.py --out sel.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ssa.ops import reference
from ssa.ops.triton import select_blocks

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the Triton interpreter, for a smoke test

def _rows_with_duplicates(idx):
    s = idx.sort(-1).values
    return ((s[..., 1:] == s[..., :-1]) & (s[..., 1:] >= 0)).any(-1)


def check(T, HQ, HK, D, s, n, dtype, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(1, T, HQ, D, device=DEVICE, generator=g).to(dtype)
    k = torch.randn(1, T, HK, D, device=DEVICE, generator=g).to(dtype)
    scale = D ** -0.5
    got = select_blocks(q, k, s, n, scale)
    want = reference.select_blocks(q, k, s, n, scale)
    differ = (got != want).any(-1)
    own = (torch.arange(T, device=DEVICE) // s)[None, :, None, None]
    missing_own = (got == own).sum(-1) != 1
    # Score gap of each differing row: best block left out minus worst block taken (<= tol: a tie swap).
    tol = (HQ // HK) * (2e-6 if dtype == torch.float32 else 2e-5)
    wrong = 0
    worst_gap = 0.0
    if differ.any():
        kbar = reference.block_means(k.float(), s)
        for b, t, h in differ.nonzero().tolist():
            score, _, _ = reference.block_scores(q[:, t:t + 1].float(), kbar, t, s, scale)
            sc = score[b, 0, h]
            g_row, w_row = set(got[b, t, h].tolist()) - {-1}, set(want[b, t, h].tolist()) - {-1}
            extra, left = g_row - w_row, w_row - g_row
            if not extra or not left or (t // s) in extra or (t // s) in left:
                wrong += 1
                continue
            gap = max(sc[c].item() for c in left) - min(sc[c].item() for c in extra)
            worst_gap = max(worst_gap, gap)
            wrong += gap > tol
    return dict(T=T, HQ=HQ, HK=HK, D=D, s=s, n=n, dtype=str(dtype).replace("torch.", ""),
                differing_rows=int(differ.sum()), duplicate_rows=int(_rows_with_duplicates(got).sum()),
                missing_own_rows=int(missing_own.sum()), beyond_tie_rows=int(wrong), worst_gap=worst_gap)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=8192)
    ap.add_argument("--budgets", default="1,2,3,4,8,16")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for n in (int(x) for x in args.budgets.split(",")):
            t0 = time.time()
            r = check(args.T, 16, 1, 64, 16, n, dtype)
            r["seconds"] = round(time.time() - t0, 2)
            rows.append(r)
            print(json.dumps(r), flush=True)
            with open(args.out, "w") as f:  # rewritten after each case: a timeout keeps what finished
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
