"""Time launch variants of the fused selection kernel (GPU): `python benchmarks/sweep_select.py`.

Varies the top-k maintenance (threshold insertion vs sort-merge), rows per program, blocks per tile
and warps at the issue's benchmark shape (B=1, HQ=16, HK=1, d=64, s=16, n=16, bf16), and checks each
variant returns the same indices as the default.
"""

import itertools
import json
import sys

import torch
from triton.testing import do_bench

from ssa.ops.triton import _select


def main(seq_lens=(32768, 131072)):
    results = []
    for T in seq_lens:
        g = torch.Generator(device="cuda").manual_seed(T)
        q = torch.randn(1, T, 16, 64, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, T, 1, 64, device="cuda", dtype=torch.bfloat16, generator=g)
        ref = _select.select_blocks(q, k, 16, 16, 0.125)
        variants = [dict(MERGE_BY_SORT=True, ROWS=128, BLOCK_TILE=64, NUM_WARPS=4)]
        for rows, tile, warps in itertools.product((64, 128), (64, 128), (4, 8)):
            variants.append(dict(MERGE_BY_SORT=False, ROWS=rows, BLOCK_TILE=tile, NUM_WARPS=warps))
        for v in variants:
            for name, value in v.items():
                setattr(_select, name, value)
            try:
                same = torch.equal(_select.select_blocks(q, k, 16, 16, 0.125), ref)
                ms = do_bench(lambda: _select.select_blocks(q, k, 16, 16, 0.125), warmup=25, rep=150,
                              return_mode="median")
            except Exception as err:  # a variant that does not compile is recorded, not fatal
                same, ms = f"{type(err).__name__}: {str(err)[:120]}", float("nan")
            row = dict(T=T, **v, ms=ms, same=same)
            results.append(row)
            print(json.dumps(row), flush=True)
    return results


if __name__ == "__main__":
    out = main()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f, indent=2)
