"""Packed documents (`cu_seqlens`) against unmasked attention at the same length, on one GPU.

    python benchmarks/bench_documents.py --out DIR [--lengths 8192 32768] [--mean-doc 2048]

For each length: documents of random lengths (exponential, mean --mean-doc, at least 1 token) fill
one row. It checks the packed kernels against the reference (run document by document), then times
with `triton.testing.do_bench` (median ms):
  * sparse stream: selection, sparse forward, forward + backward; packed vs unmasked, and their ratio;
  * building the block table once per batch of boundaries (a model builds it once for all layers);
  * dense options: unmasked SDPA, the varlen flash kernel (what `full_attention(cu_seqlens=...)`
    uses on the GPU), SDPA per document, and a FlexAttention document mask (benchmark-only here).
Writes documents.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from ssa.commands.bench import add_shape_arguments
from ssa import ops
from ssa.ops import dense, reference


def document_lengths(T: int, mean: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    out, total = [], 0
    while total < T:
        L = max(1, int(torch.empty(1).exponential_(1.0 / mean, generator=g)))
        L = min(L, T - total)
        out.append(L)
        total += L
    return out


def bench(fn, rep):
    if not torch.cuda.is_available():  # CPU smoke runs of this script: one timed call
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return float(do_bench(fn, warmup=10, rep=rep, return_mode="median"))


def flex_document_attention(q, k, v, cu, scale):
    """FlexAttention with a causal document mask (compiled): benchmark-only candidate."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    T = q.shape[1]
    doc = torch.searchsorted(cu[1:].long(), torch.arange(T, device=q.device), right=True)

    def mask(b, h, qi, ki):
        return (doc[qi] == doc[ki]) & (ki <= qi)

    block_mask = create_block_mask(mask, None, None, T, T, device=q.device)
    compiled = torch.compile(flex_attention)
    G = q.shape[2] // k.shape[2]

    def run(q, k, v):
        o = compiled(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask, scale=scale,
                     enable_gqa=G > 1)
        return o.transpose(1, 2)

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--mean-doc", type=int, default=2048)
    add_shape_arguments(ap, rep_ms=60)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--deadline-s", type=float, default=1e9, help="skip the remaining parts after this many seconds")
    a = ap.parse_args()
    t_start = time.time()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    s, n, HQ, HK, D = a.block_size, a.block_count, a.q_heads, a.kv_heads, a.head_dim
    scale = D ** -0.5
    results = []
    for T in a.lengths:
        if time.time() - t_start > a.deadline_s:
            break
        lengths = document_lengths(T, a.mean_doc, seed=T)
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=dev)
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(1, T, h, D, device=dev, dtype=dtype, generator=g) for h in (HQ, HK, HK))
        do = torch.randn(1, T, HQ, D, device=dev, dtype=dtype, generator=g)
        row = {"T": T, "docs": len(lengths), "mean_doc": T / len(lengths), "max_doc": max(lengths)}

        # ---- correctness against the reference, document by document --------------------------
        idx = ops.select_blocks(q, k, s, n, scale, cu_seqlens=cu)
        ref_idx = reference.select_blocks(q.float(), k.float(), s, n, scale, cu)
        row["select_rows_differing"] = float((idx != ref_idx).any(-1).float().mean())
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        o = ops.block_sparse_attention(*leaves, s, n, idx, scale, cu_seqlens=cu)
        o.backward(do)
        ref_leaves = [x.float().clone().requires_grad_() for x in (q, k, v)]
        o_ref = reference.block_sparse_attention(*ref_leaves, idx, s, scale, False, cu)
        o_ref.backward(do.float())
        row["sparse_max_err"] = {
            name: float((got - want).abs().max())
            for name, got, want in [("o", o.float(), o_ref)] + [
                (f"d{c}", x.grad.float(), y.grad) for c, x, y in zip("qkv", leaves, ref_leaves)]
        }
        dense_o = ops.full_attention(q, k, v, scale, cu_seqlens=cu)
        dense_ref = reference.full_attention(q.float(), k.float(), v.float(), scale, cu)
        row["dense_max_err"] = float((dense_o.float() - dense_ref).abs().max())
        row["dense_path"] = "varlen" if dense.varlen_available(q) else "sdpa-per-document"

        # ---- sparse stream timings ------------------------------------------------------------
        ms = {}
        for name, c in (("unmasked", None), ("packed", cu)):
            ix = ops.select_blocks(q, k, s, n, scale, cu_seqlens=c)
            lv = [x.clone().requires_grad_() for x in (q, k, v)]
            ms[f"select_{name}"] = bench(lambda: ops.select_blocks(q, k, s, n, scale, cu_seqlens=c), a.rep_ms)
            ms[f"fwd_{name}"] = bench(lambda: ops.block_sparse_attention(q, k, v, s, n, ix, scale, cu_seqlens=c), a.rep_ms)

            def fwd_bwd():
                out = ops.block_sparse_attention(*lv, s, n, ix, scale, cu_seqlens=c)
                torch.autograd.grad(out, lv, do)

            ms[f"fwdbwd_{name}"] = bench(fwd_bwd, a.rep_ms)
            ms[f"total_{name}"] = ms[f"select_{name}"] + ms[f"fwdbwd_{name}"]
        for part in ("select", "fwd", "fwdbwd", "total"):
            ms[f"ratio_{part}"] = ms[f"{part}_packed"] / ms[f"{part}_unmasked"]
        # A new boundaries tensor per call: the table build and value check a model pays once per forward.
        ms["table_build"] = bench(
            lambda: ops.select_blocks(q[:, :16], k[:, :16], s, 1, scale, cu_seqlens=torch.tensor(
                [0, 16], dtype=torch.int32, device=dev)), a.rep_ms)

        # ---- dense options --------------------------------------------------------------------
        lv = [x.clone().requires_grad_() for x in (q, k, v)]

        def timed_dense(fn):
            def run():
                out = fn(*lv)
                torch.autograd.grad(out, lv, do)
            return bench(lambda: fn(q, k, v), a.rep_ms), bench(run, a.rep_ms)

        options = {
            "sdpa_unmasked": lambda q, k, v: ops.full_attention(q, k, v, scale),
            "varlen": lambda q, k, v: dense.document_attention(q, k, v, scale, cu),
            "sdpa_per_document": lambda q, k, v: reference.full_attention(q, k, v, scale, cu),
        }
        if not a.no_flex and time.time() - t_start < a.deadline_s:
            try:
                options["flex_document_mask"] = flex_document_attention(q, k, v, cu, scale)
            except Exception as err:  # noqa: BLE001 - recorded, the other options still run
                row["flex_error"] = repr(err)[:300]
        for name, fn in options.items():
            if time.time() - t_start > a.deadline_s:
                break
            try:
                ms[f"dense_fwd_{name}"], ms[f"dense_fwdbwd_{name}"] = timed_dense(fn)
            except Exception as err:  # noqa: BLE001
                row[f"{name}_error"] = repr(err)[:300]
        row["ms"] = ms
        results.append(row)
        print(json.dumps(row), flush=True)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
           "shape": dict(HQ=HQ, HK=HK, D=D, block_size=s, block_count=n, dtype=str(dtype))}
    (out / "documents.json").write_text(json.dumps({"env": env, "results": results}, indent=2))
    print(f"\n{'T':>6} {'docs':>5} {'sel x':>6} {'fwd x':>6} {'f+b x':>6} {'total x':>7}   dense f+b ms: "
          "unmasked / varlen / per-doc / flex")
    for r in results:
        m = r["ms"]
        dense_ms = " / ".join(f"{m.get(f'dense_fwdbwd_{k}', float('nan')):.3f}" for k in
                              ("sdpa_unmasked", "varlen", "sdpa_per_document", "flex_document_mask"))
        print(f"{r['T']:>6} {r['docs']:>5} {m['ratio_select']:>6.3f} {m['ratio_fwd']:>6.3f} {m['ratio_fwdbwd']:>6.3f} "
              f"{m['ratio_total']:>7.3f}   {dense_ms}")


if __name__ == "__main__":
    main()
