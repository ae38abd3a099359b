"""Kernel variants side by side in one process (GPU): `python benchmarks/ab.py OUTDIR`.

Selection alone for every variant of SELECT_VARIANTS at 8k/32k/64k/128k, then the sparse forward
(selection + attention) for v1 and the two fastest variants, then `ssa bench train-step` (300m
preset, 8k) for full, ssa with v1 and ssa with the fastest selection. Optionally (--parts backward)
the sparse backward at 8k/64k for each inverted-index build. Shape: B=1, HQ=16, HK=1, d=64, s=16,
n=16, bf16. Writes OUTDIR/ab.json and prints a short table last.
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
from ssa.ops.triton import _attention, _select

OLD = dict(KERNEL="v1", BLOCK_TILE=64, MAXNREG=None)  # version 1 as run before run 5
SELECT_VARIANTS = {  # launch-shape variants of the default (v3), as in run 5 call 4; edit to try others
    "v3": {},
    "v3_stages2": dict(NUM_STAGES=2),
    "v3_rows64": dict(ROWS=64),
    "v3_rows64_nocap": dict(ROWS=64, MAXNREG=None),
    "v1": OLD,
}
FWD_VARIANTS = ["v1"]  # the fastest selection variants are appended after the selection sweep
BEST = {}
OUTDIR = "."
DEFAULTS = {name: getattr(_select, name)
            for name in ("KERNEL", "UNIFORM", "NUM_WARPS", "BLOCK_TILE", "FIXED_SHIFT", "UNIFORM_PASS2", "MAXNREG",
                         "FLOAT_INSERT", "ROWS", "NUM_STAGES")}
DEVICE = "cuda"


def use(settings):
    for name, value in dict(DEFAULTS, **settings).items():
        setattr(_select, name, value)


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
            use(OLD)
            ref = select_blocks(q, k, s, n, scale, backend="triton")
            for name, settings in SELECT_VARIANTS.items():
                try:
                    use(settings)
                    got = select_blocks(q, k, s, n, scale, backend="triton")
                    row[f"select_{name}_ms"] = ms(lambda: select_blocks(q, k, s, n, scale, backend="triton"))
                    row[f"select_{name}_rows_differ"] = int((got != ref).any(-1).sum())
                except Exception as err:
                    row[f"select_{name}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
            use(OLD)
        res["forward"].append(row)
        print(json.dumps(row), flush=True)
        print(f"  {T // 1024}k select ms: " + " ".join(
            f"{k[7:-3]}={v:.3f}" for k, v in row.items() if k.startswith("select_") and k.endswith("_ms")), flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    # The two fastest variants (summed time relative to v1 over the lengths) also run the sparse forward.
    rel = {name: sum(r[f"select_{name}_ms"] / r["select_v1_ms"] for r in res["forward"])
           for name in SELECT_VARIANTS if all(f"select_{name}_ms" in r for r in res["forward"])}
    ranked = sorted((x for x in rel if x != "v1"), key=rel.get)  # v1: the reference point, never "best"
    FWD_VARIANTS.extend(ranked[:2])
    BEST.update(SELECT_VARIANTS[ranked[0]] if ranked else OLD)
    res["best_select"] = ranked[0] if ranked else "v1"
    with open(f"{OUTDIR}/best_select.json", "w") as f:  # for `ssa bench ... --select-config`
        json.dump(dict(BEST), f)
    print("selection ranking (sum of time / v1):", [(x, round(rel[x] / len(lens), 3)) for x in ranked], flush=True)
    for row in res["forward"]:
        q, k, v = inputs(row["T"])
        with torch.no_grad():
            for name in FWD_VARIANTS:
                use(SELECT_VARIANTS[name])
                row[f"fwd_{name}_ms"] = ms(lambda: block_sparse_attention(q, k, v, s, n, None, scale, backend="triton"))
        use(OLD)
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
        grads = {}
        default = _attention.INDEX_BUILD
        for build in ("torch", "triton", "fused"):
            _attention.INDEX_BUILD = build
            try:
                for x in leaves:
                    x.grad = None
                o.backward(do, retain_graph=True)
                grads[build] = [x.grad.clone() for x in leaves]
                row[f"bwd_{build}_ms"] = ms(lambda: o.backward(do, retain_graph=True), grad_to_none=leaves)
            except Exception as err:
                row[f"bwd_{build}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        _attention.INDEX_BUILD = default
        for build in ("triton", "fused"):
            if build in grads and "torch" in grads:
                row[f"bwd_{build}_maxdiff"] = max(
                    float((a.float() - b.float()).abs().max()) for a, b in zip(grads[build], grads["torch"]))
        o = sdpa(q, k, v, scale)
        row["sdpa_bwd_ms"] = ms(lambda: o.backward(do, retain_graph=True), grad_to_none=leaves)
        res["backward"].append(row)
        print(json.dumps(row), flush=True)
        del q, k, v, do, leaves, o
        torch.cuda.empty_cache()


def train_part(res, steps):
    from ssa.commands.bench import bench_train_step

    import ssa.ops

    best = BEST or {}  # the library defaults
    # GPT-2's vocabulary (50257) makes the LM-head GEMMs fall back to slow align-1 kernels (call 1
    # profile): the *_v50304 rows pad it to a multiple of 64 to see the ratio without that.
    runs = [("full", "full", OLD, None, 50257), ("ssa_v1", "ssa", OLD, None, 50257),
            ("ssa_best_select", "ssa", best, None, 50257), ("ssa_best_select_torch_align", "ssa", best, "torch", 50257),
            ("full_v50304", "full", OLD, None, 50304), ("ssa_best_select_v50304", "ssa", best, None, 50304)]
    fused_align = getattr(ssa.ops, "alignment_loss", None)
    for label, method, settings, align_backend, vocab in runs:
        use(settings)
        if align_backend:  # the alignment loss as plain PyTorch ops instead of the fused kernels
            if fused_align is None:
                continue
            ssa.ops.alignment_loss = lambda *a, backend="auto", **kw: fused_align(*a, backend=align_backend, **kw)
        args = SimpleNamespace(preset="300m", methods=method, seq_len=8192, batch=1, vocab_size=vocab, layers=None,
                               steps=steps, windows=3, one_at_a_time=True, full_ratio=None, json=None, select_config=None,
                               index_build="fused")
        try:
            out = bench_train_step(args)
            row = dict(out["rows"][0], label=label, select=settings, vocab_size=vocab)
        except Exception as err:
            row = {"label": label, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        if fused_align is not None:
            ssa.ops.alignment_loss = fused_align
        res["train"].append(row)
        print(json.dumps(row), flush=True)
    use(OLD)


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
        print(f"{r['T'] // 1024}k sdpa {r['sdpa_bwd_ms']:.3f} | " + " ".join(
            f"{b}={r[f'bwd_{b}_ms']:.3f}" if f"bwd_{b}_ms" in r else f"{b}=ERR" for b in ("torch", "triton", "fused"))
            + f" | maxdiff triton {r.get('bwd_triton_maxdiff', '-')} fused {r.get('bwd_fused_maxdiff', '-')}")
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
    p.add_argument("--parts", default="forward,train", help="in this order (backward: the index builds)")
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
    print("#", res["env"], {k: v for k, v in DEFAULTS.items()}, flush=True)
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
