"""NSA's compressed and sliding-window branches over packed documents, on one GPU.

    python benchmarks/bench_nsa_documents.py --out DIR [--rows 16] [--seq-len 2048] [--mean-doc 600]

Rows of --seq-len tokens are filled with documents of random lengths (exponential, mean --mean-doc,
cut at every row boundary, as the trainer packs them) and flattened to one sequence with
`cu_seqlens`. For each branch it checks the packed op against the same op run document by document,
then times forward + backward (median ms, `triton.testing.do_bench`) of:
  * rows: the unmasked op on [rows, seq_len] (what `data.pack=stream` costs);
  * packed: the op with `cu_seqlens` on [1, rows * seq_len] (one launch for all documents);
  * loop: the op run on each document's slice (the former per-document path; timed once).
Writes nsa_documents.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from triton.testing import do_bench

from ssa import ops
from ssa.ops import reference


def packed_boundaries(rows: int, seq_len: int, mean: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    bounds = [0]
    for r in range(rows):
        end = (r + 1) * seq_len
        while bounds[-1] < end:
            length = max(1, int(torch.empty(1).exponential_(1.0 / mean, generator=g)))
            bounds.append(min(bounds[-1] + length, end))
    return torch.tensor(bounds, dtype=torch.int32)


def fwd_bwd(fn, q, k, v):
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]

    def step():
        for x in leaves:
            x.grad = None
        fn(*leaves).sum().backward()
    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--mean-doc", type=int, default=600)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--window", type=int, default=128)
    a = p.parse_args()
    dev = "cuda"
    B, L = a.rows, a.seq_len
    cu = packed_boundaries(B, L, a.mean_doc, seed=0).to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(B, L, h, a.head_dim, device=dev, generator=g, dtype=torch.bfloat16)
               for h in (a.heads, a.kv_heads, a.kv_heads))
    flat = [x.reshape(1, B * L, *x.shape[2:]) for x in (q, k, v)]
    results = {"rows": B, "seq_len": L, "documents": cu.numel() - 1, "mean_doc": a.mean_doc,
               "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim, "branches": {}}
    for name, size in (("compressed_attention", a.block_size), ("sliding_window_attention", a.window)):
        op = getattr(ops, name)
        packed = lambda *x: op(*x, size, cu_seqlens=cu)  # noqa: E731
        loop = lambda *x: reference.per_document(lambda *y: op(*y, size), cu, *x)  # noqa: E731
        err = (packed(*flat).float() - loop(*flat).float()).abs().max().item()
        row = {"max_abs_err_vs_loop": err,
               "rows_ms": do_bench(fwd_bwd(lambda *x: op(*x, size), q, k, v)),
               "packed_ms": do_bench(fwd_bwd(packed, *flat))}
        step = fwd_bwd(loop, *flat)
        step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        row["loop_ms"] = (time.perf_counter() - t0) * 1e3
        row["packed_over_rows"] = row["packed_ms"] / row["rows_ms"]
        results["branches"][name] = row
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "nsa_documents.json").write_text(json.dumps(results, indent=1))
    print(f"{B} rows x {L} tokens, {results['documents']} documents, bf16, fwd+bwd median ms")
    print(f"{'branch':<26}{'rows':>9}{'packed':>9}{'loop':>10}{'packed/rows':>13}{'max err':>10}")
    for name, r in results["branches"].items():
        print(f"{name:<26}{r['rows_ms']:>9.3f}{r['packed_ms']:>9.3f}{r['loop_ms']:>10.1f}"
              f"{r['packed_over_rows']:>13.2f}{r['max_abs_err_vs_loop']:>10.2e}")


if __name__ == "__main__":
    main()
