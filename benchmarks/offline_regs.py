"""Compile the selection kernel at several launch settings for the H100 (sm_90a) on a machine without a GPU and print
their register count, spills and shared memory (ptxas -v), so that a device run only times variants
that keep the occupancy they were meant to have (a variant is timed with `benchmarks/ab.py`).

    python benchmarks/offline_regs.py            # the benchmark shape: HQ=16, HK=1, d=64, s=16, n=16, bf16

Occupancy on Hopper at 4 warps per program: <= 168 registers -> 3 programs per SM, <= 128 -> 4.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for real, not for the interpreter

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ssa.ops.triton import _select

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _types(fn, runtime: dict[str, str], constexprs: dict):
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        else:
            sig[name] = runtime[name]
            # Pointers and the sizes/strides a launch sees as multiples of 16 (as at the benchmark shape).
            if runtime[name].startswith("*") or name in _DIV16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


_DIV16 = {"T", "NBF", "sq_b", "sq_t", "skb_b", "skb_h", "skb_part", "skb_n", "so_b", "so_t"}


def compile_variant(fn, runtime, constexprs, num_warps=4, num_stages=2, maxnreg=None):
    sig, attrs = _types(fn, runtime, constexprs)
    src = ASTSource(fn, sig, constexprs={k: v for k, v in constexprs.items()}, attrs=attrs)
    opts = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg:
        opts["maxnreg"] = maxnreg
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as f:
            f.write(k.asm["ptx"])
        res = subprocess.run([PTXAS, "-v", "--gpu-name", "sm_90a", ptx, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True, check=False)
    info = res.stderr
    regs = re.search(r"Used (\d+) registers", info)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    smem = k.metadata.shared
    return int(regs.group(1)) if regs else -1, (spill.groups() if spill else ("?", "?")), smem


def main(argv):
    i32, f32 = "i32", "fp32"
    common_rt = {"q_ptr": "*bf16", "kb_ptr": "*bf16", "out_ptr": "*i32", "T": i32, "HK": i32, "NBF": i32,
                 "sq_b": i32, "sq_t": i32, "sq_h": i32, "skb_b": i32, "skb_h": i32, "skb_part": i32,
                 "skb_n": i32, "so_b": i32, "so_t": i32, "so_h": i32, "scale2": f32, "kn_ptr": "*fp32"}
    base = dict(S=16, N=16, G=16, GP=16, BQ=8, D=64, BD=64, KB=16, BN1=64, NSPLIT=2, IEEE=False,
                bstart_ptr=None, bfirst_ptr=None, DOCS=False)  # no packed documents
    rows = []
    for name, fn, extra, opts in VARIANTS:
        ce = {**base, **extra}
        ce = {k: v for k, v in ce.items() if k in fn.arg_names}
        regs, (st, ld), smem = compile_variant(fn, common_rt, ce, **opts)
        rows.append((name, regs, st, ld, smem))
        print(f"{name:40s} regs {regs:4d}  spill st/ld {st}/{ld} B  smem {smem} B", flush=True)


KERNEL = _select._select_kernel
_BASE = dict(UNIFORM=True)  # BQ=8 divides s=16: block-uniform programs, as at the benchmark shape
VARIANTS = [  # (name, kernel, constexprs over `base`, compile options); the default is BN1=32, maxnreg 128
    ("bn64", KERNEL, _BASE, {}),
    ("bn32", KERNEL, {**_BASE, "BN1": 32}, {}),
    ("bn32 maxnreg 128 (default)", KERNEL, {**_BASE, "BN1": 32}, {"maxnreg": 128}),
    ("bn32 maxnreg 96", KERNEL, {**_BASE, "BN1": 32}, {"maxnreg": 96}),
    ("bn64 maxnreg 128", KERNEL, _BASE, {"maxnreg": 128}),
    ("bn16", KERNEL, {**_BASE, "BN1": 16}, {}),
]
if __name__ == "__main__":
    main(sys.argv[1:])
