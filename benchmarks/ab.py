"""Selection launch settings side by side in one process (GPU): `python benchmarks/ab.py OUTDIR`.

Selection alone for every `SelectLaunch` of SELECT_VARIANTS at 8k/32k/64k/128k (each checked to give
the default's answer), then the sparse forward (selection + attention) for the default and the two
fastest other variants, then `ssa bench train-step` (300m preset, 8k) for full and ssa at the
library defaults. Optionally (--parts backward) the sparse backward at 8k/64k against SDPA's.
Shape: B=1, HQ=16, HK=1, d=64, s=16, n=16, bf16. Writes OUTDIR/ab.json and prints a short table last.
To make a variant the default, change `SelectLaunch`'s defaults in ssa/ops/triton/_select.py.
"""

import argparse
import json
import signal
import sys
import time
from types import SimpleNamespace

import torch
from triton.testing import do_bench

from ssa.commands.bench import sdpa_causal as sdpa
from ssa.ops import block_sparse_attention, select_blocks
from ssa.ops.triton import _select
from ssa.ops.triton._select import SelectLaunch

SELECT_VARIANTS = {  # launch settings to compare with the default; edit to try others
    "default": SelectLaunch(),
    "stages2": SelectLaunch(num_stages=2),
    "rows64": SelectLaunch(rows=64),
    "rows64_nocap": SelectLaunch(rows=64, maxnreg=None),
    "tile64_nocap": SelectLaunch(block_tile=64, maxnreg=None),
}
FWD_VARIANTS = ["default"]  # the fastest other variants are appended after the selection sweep
OUTDIR = "."
DEVICE = "cuda"


def select(q, k, s, n, scale, name):
    return _select.select_blocks(q, k, s, n, scale, launch=SELECT_VARIANTS[name])


def ms(fn, rep=100, grad_to_none=None):
    if DEVICE == "cpu":  # --dry: check the script's logic under the interpreter
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return float(do_bench(fn, warmup=10, rep=rep, grad_to_none=grad_to_none, return_mode="median"))



def inputs(T, D=64):
    g = torch.Generator(device=DEVICE).manual_seed(T)
    q = torch.randn(1, T, 16, D, device=DEVICE, dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, T, 1, D, device=DEVICE, dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, T, 1, D, device=DEVICE, dtype=torch.bfloat16, generator=g)
    return q, k, v


def forward_part(res, lens):
    s, n, scale = 16, 16, 0.125
    for T in lens:  # selection alone, every variant
        q, k, v = inputs(T)
        row = {"T": T}
        with torch.no_grad():
            row["sdpa_fwd_ms"] = ms(lambda: sdpa(q, k, v, scale))
            ref = select_blocks(q, k, s, n, scale, backend="triton")  # the public op: default settings
            for name in SELECT_VARIANTS:
                try:
                    got = select(q, k, s, n, scale, name)
                    row[f"select_{name}_ms"] = ms(lambda: select(q, k, s, n, scale, name))
                    row[f"select_{name}_rows_differ"] = int((got != ref).any(-1).sum())
                except Exception as err:
                    row[f"select_{name}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        res["forward"].append(row)
        print(json.dumps(row), flush=True)
        print(f"  {T // 1024}k select ms: " + " ".join(
            f"{k[7:-3]}={v:.3f}" for k, v in row.items() if k.startswith("select_") and k.endswith("_ms")), flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    # The two fastest other variants (summed time relative to the default over the lengths) also run
    # the sparse forward: their selection, then the attention over it.
    rel = {name: sum(r[f"select_{name}_ms"] / r["select_default_ms"] for r in res["forward"])
           for name in SELECT_VARIANTS if all(f"select_{name}_ms" in r for r in res["forward"])}
    ranked = sorted((x for x in rel if x != "default"), key=rel.get)
    FWD_VARIANTS.extend(ranked[:2])
    res["best_select"] = min(rel, key=rel.get) if rel else "default"
    res["select_variants"] = {name: vars(launch) for name, launch in SELECT_VARIANTS.items()}
    print("selection ranking (sum of time / default):", [(x, round(rel[x] / len(lens), 3)) for x in ranked],
          flush=True)
    for row in res["forward"]:
        q, k, v = inputs(row["T"])
        with torch.no_grad():
            for name in FWD_VARIANTS:
                row[f"fwd_{name}_ms"] = ms(lambda: block_sparse_attention(
                    q, k, v, s, n, select(q, k, s, n, scale, name), scale, backend="triton", check_indices=False))
        del q, k, v
        torch.cuda.empty_cache()


def backward_part(res, lens):
    s, n, scale = 16, 16, 0.125
    for T in lens:
        q, k, v = inputs(T)
        do = torch.randn_like(q)
        leaves = [x.requires_grad_() for x in (q, k, v)]
        idx = select_blocks(q.detach(), k.detach(), s, n, scale, backend="triton")
        o = block_sparse_attention(q, k, v, s, n, idx, scale, backend="triton")
        row = {"T": T}
        row["bwd_sparse_ms"] = ms(lambda: o.backward(do, retain_graph=True), grad_to_none=leaves)
        o = sdpa(q, k, v, scale)
        row["sdpa_bwd_ms"] = ms(lambda: o.backward(do, retain_graph=True), grad_to_none=leaves)
        res["backward"].append(row)
        print(json.dumps(row), flush=True)
        del q, k, v, do, leaves, o
        torch.cuda.empty_cache()


def train_part(res, steps):
    from ssa.commands.bench import bench_train_step

    import ssa.ops

    # GPT-2's vocabulary (50257) makes the LM-head GEMMs fall back to slow align-1 kernels: the
    # *_v50304 rows pad it to a multiple of 64 to see the ratio without that.
    runs = [("full", "full", None, 50257), ("ssa", "ssa", None, 50257), ("ssa_torch_align", "ssa", "torch", 50257),
            ("full_v50304", "full", None, 50304), ("ssa_v50304", "ssa", None, 50304)]
    fused_align = getattr(ssa.ops, "alignment_loss", None)
    for label, method, align_backend, vocab in runs:
        if align_backend:  # the alignment loss as plain PyTorch ops instead of the fused kernels
            if fused_align is None:
                continue
            ssa.ops.alignment_loss = lambda *a, backend="auto", **kw: fused_align(*a, backend=align_backend, **kw)
        args = SimpleNamespace(preset="300m", methods=method, seq_len=8192, batch=1, vocab_size=vocab, layers=None,
                               steps=steps, windows=3, one_at_a_time=True, full_ratio=None, json=None)
        try:
            out = bench_train_step(args)
            row = dict(out["rows"][0], label=label, vocab_size=vocab)
        except Exception as err:
            row = {"label": label, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        if fused_align is not None:
            ssa.ops.alignment_loss = fused_align
        res["train"].append(row)
        print(json.dumps(row), flush=True)


def table(res):
    print("\n== selection / sparse fwd (ms; fwd x = SDPA fwd / sparse fwd)")
    for r in res["forward"]:
        sel = " ".join(f"{k[7:-3]}={v:.3f}" for k, v in r.items() if k.startswith("select_") and k.endswith("_ms"))
        diff = " ".join(f"{k[7:-13]}:{v}" for k, v in r.items() if k.endswith("rows_differ") and v)
        fx = "fwd " + " ".join(f"{v}={r[f'fwd_{v}_ms']:.3f} ({r['sdpa_fwd_ms'] / r[f'fwd_{v}_ms']:.2f}x)"
                               for v in FWD_VARIANTS if f"fwd_{v}_ms" in r)
        print(f"{r['T'] // 1024}k sdpa {r['sdpa_fwd_ms']:.3f} | {sel} | {fx} | differ {diff or 'none'}")
        errs = [k for k in r if k.endswith("_error")]
        if errs:
            print("   errors:", {k: r[k][:120] for k in errs})
    print("== sparse bwd (ms)")
    for r in res["backward"]:
        print(f"{r['T'] // 1024}k sdpa {r['sdpa_bwd_ms']:.3f} | sparse {r['bwd_sparse_ms']:.3f}")
    print("== train step 300m 8k (ms, median)")
    fulls = {r.get("vocab_size", 50257): r["step_ms"] for r in res["train"]
             if r.get("label", "").startswith("full") and "step_ms" in r}
    for r in res["train"]:
        full = fulls.get(r.get("vocab_size", 50257))
        if "step_ms" in r:
            print(f"{r['label']}: {r['step_ms']:.1f} ms" + (f" = {r['step_ms'] / full:.3f}x full" if full else "")
                  + f", synced {r['synced_step_ms']:.1f} ms")
        else:
            print(f"{r['label']}: {r.get('error')}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--fwd-lens", default="8192,32768,65536,131072")
    p.add_argument("--bwd-lens", default="8192,65536")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--parts", default="forward,train", help="in this order (also: backward)")
    p.add_argument("--dry", action="store_true", help="CPU interpreter, tiny lengths, no train step")
    a = p.parse_args()
    from ssa.commands.bench import environment

    global DEVICE, OUTDIR
    OUTDIR = a.out
    if a.dry:
        DEVICE = "cpu"
        env = {"device": "cpu (dry run)"}
    else:
        env = environment()
    res = {"env": env, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "forward": [], "backward": [], "train": []}
    print("#", res["env"], "default:", SelectLaunch(), flush=True)
    parts = a.parts.split(",")

    def stop(signum, frame):  # `timeout` sends SIGTERM: still write what was measured
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        for part in parts:
            if part == "forward":
                forward_part(res, [int(x) for x in a.fwd_lens.split(",")])
            elif part == "backward":
                backward_part(res, [int(x) for x in a.bwd_lens.split(",")])
            elif part == "train":
                train_part(res, a.steps)
            with open(f"{a.out}/ab.json", "w") as f:
                json.dump(res, f, indent=2)
    except KeyboardInterrupt:
        print("stopped early (time limit)", flush=True)
    finally:
        with open(f"{a.out}/ab.json", "w") as f:
            json.dump(res, f, indent=2)
        table(res)


if __name__ == "__main__":
    sys.exit(main())
