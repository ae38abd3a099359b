"""Time launch variants of the fused selection kernel (GPU): `python benchmarks/sweep_select.py`.

Varies the top-k maintenance (threshold insertion vs sort-merge), rows per program, blocks per tile
and warps at the issue's benchmark shape (B=1, HQ=16, HK=1, d=64, s=16, n=16, bf16), and checks each
variant returns the same indices as the default.
"""

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
        for rows, tile, warps in ((128, 64, 4), (128, 64, 8), (64, 64, 4), (128, 128, 8), (256, 64, 8)):
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


def best(results):
    """The variant with the smallest summed time over the lengths, among those that agree."""
    total = {}
    for r in results:
        key = json.dumps({k: r[k] for k in ("MERGE_BY_SORT", "ROWS", "BLOCK_TILE", "NUM_WARPS")})
        ok = r["same"] is True and r["ms"] == r["ms"]
        total[key] = total.get(key, 0.0) + (r["ms"] if ok else float("inf"))
    return json.loads(min(total, key=total.get))


if __name__ == "__main__":
    out = main()
    choice = best(out)
    print("best:", json.dumps(choice))
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump({"results": out, "best": choice}, f, indent=2)
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            json.dump(choice, f)
