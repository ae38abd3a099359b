"""Old vs new kernel variants side by side in one process (GPU): `python benchmarks/ab.py OUTDIR`.

Selection and sparse forward at 32k/64k/128k (selection v1 vs v2 and v2's parts), sparse backward at
8k/64k for each inverted-index build, and `ssa bench train-step` (300m preset, 8k) for full and for
ssa with the old and the new settings. Shape: B=1, HQ=16, HK=1, d=64, s=16, n=16, bf16. Writes
OUTDIR/ab.json and prints a short table last.
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

OLD = dict(KERNEL="v1")
NEW = dict(KERNEL="v2", PREFETCH=False, UNIFORM=True, PROLOGUE="triton", GROUP_MMA=0)
SELECT_VARIANTS = {  # most important first (the run may be cut short)
    "v1": OLD,
    "v2": NEW,
    "v2_g2": dict(NEW, GROUP_MMA=2),
    "v2_g1": dict(NEW, GROUP_MMA=1),
    "v2_bn32": dict(NEW, BLOCK_TILE=32),
    "v2_g2_bn32": dict(NEW, GROUP_MMA=2, BLOCK_TILE=32),
    "v2_g2_w8": dict(NEW, GROUP_MMA=2, NUM_WARPS=8),
    "v2_nouniform": dict(NEW, UNIFORM=False),
    "v2_prefetch": dict(NEW, PREFETCH=True),
}
FWD_VARIANTS = ("v1", "v2", "v2_g2")  # also timed as selection + attention
DEFAULTS = {name: getattr(_select, name)
            for name in ("KERNEL", "PREFETCH", "UNIFORM", "PROLOGUE", "GROUP_MMA", "NUM_WARPS", "BLOCK_TILE")}
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
    for T in lens:
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
                    if name in FWD_VARIANTS:
                        row[f"fwd_{name}_ms"] = ms(
                            lambda: block_sparse_attention(q, k, v, s, n, None, scale, backend="triton"))
                except Exception as err:
                    row[f"select_{name}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
            use(OLD)
        res["forward"].append(row)
        print(json.dumps(row), flush=True)
        print(f"  {T // 1024}k select ms: " + " ".join(
            f"{k[7:-3]}={v:.3f}" for k, v in row.items() if k.startswith("select_") and k.endswith("_ms")), flush=True)
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

    runs = [("full", "full", OLD, "torch"), ("ssa_old", "ssa", OLD, "torch"),
            ("ssa_new", "ssa", NEW, "fused"), ("ssa_new_triton_index", "ssa", NEW, "triton")]
    for label, method, settings, build in runs:
        use(settings)
        args = SimpleNamespace(preset="300m", methods=method, seq_len=8192, batch=1, vocab_size=50257, layers=None,
                               steps=steps, full_ratio=None, json=None, select_config=None, index_build=build)
        try:
            out = bench_train_step(args)
            row = dict(out["rows"][0], label=label)
        except Exception as err:
            row = {"label": label, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        res["train"].append(row)
        print(json.dumps(row), flush=True)
    use(OLD)
    _attention.INDEX_BUILD = "torch"


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
    full = next((r["step_ms"] for r in res["train"] if r.get("label") == "full" and "step_ms" in r), None)
    for r in res["train"]:
        if "step_ms" in r:
            print(f"{r['label']}: {r['step_ms']:.1f} ms" + (f" = {r['step_ms'] / full:.3f}x full" if full else "")
                  + f", peak {r['peak_gib']:.1f} GiB")
        else:
            print(f"{r['label']}: {r.get('error')}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--fwd-lens", default="32768,65536,131072")
    p.add_argument("--bwd-lens", default="8192,65536")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--parts", default="backward,train,forward", help="in this order")
    p.add_argument("--dry", action="store_true", help="CPU interpreter, tiny lengths, no train step")
    a = p.parse_args()
    from ssa.commands.bench import environment

    global DEVICE
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
