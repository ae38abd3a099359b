"""The selection kernel's GPU code keeps exact ties exact (no GPU needed: Triton compiles for sm_90).

Equal block probabilities must sum to equal group scores, or exact ties would not go to the lower
block. With floating-point contraction the compiler turns one head's `e * (1/l)` plus the group
sum's add into an FMA in some registers of a tile and not in others, and tied blocks then score an
ulp apart (on an H200 this broke the tie rule in 55 of 240 rows). The interpreter never contracts,
so only the generated code can show it: no FMA may take an exp2 result as a factor.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")


def _recorded_launch(dtype, group: int, block_count: int, head_dim: int):
    """(kernel, args, meta) of the launch `select_blocks` makes, recorded instead of run."""
    from ssa.ops.triton import _select

    seen = {}

    def record(kernel, grid, maxnreg, args, meta):
        seen.update(kernel=kernel, args=args, meta=dict(meta, maxnreg=maxnreg))

    def block_keys(k, block_size, nsplit, factor, table=None):  # shapes only: nothing runs here
        B, T, HK, D = k.shape
        return torch.empty(B, HK, nsplit, T // block_size, D, dtype=k.dtype), torch.zeros(B * HK)

    # Only in the child process that compiles: record the launch instead of running kernels.
    _select._launch_capped, _select.block_keys_and_bound = record, block_keys
    q = torch.randn(1, 67, 2 * group, head_dim, dtype=dtype)
    k = torch.randn(1, 67, 2, head_dim, dtype=dtype)
    _select.select_blocks(q, k, 16, block_count, head_dim ** -0.5)
    return seen["kernel"], seen["args"], seen["meta"]


def _ptx(kernel, args, meta) -> str | None:
    """The PTX of the launch for sm_90, or None when this triton cannot compile for CUDA here."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    options = {k: meta.pop(k) for k in ("num_warps", "num_stages", "maxnreg", "enable_fp_fusion") if k in meta}
    types = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int32: "*i32"}
    names = kernel.arg_names
    signature, constexprs = {}, {}
    for i, name in enumerate(names):
        if name in meta or i >= len(args):  # constexpr arguments (and defaulted pointers) come by name
            signature[name] = "constexpr"
            constexprs[(i,)] = meta.get(name, kernel.params[i].default)
        else:
            a = args[i]
            signature[name] = types[a.dtype] if isinstance(a, torch.Tensor) else ("fp32" if isinstance(a, float) else "i32")
    try:
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", 90, 32), options=options)
    except (ImportError, RuntimeError, FileNotFoundError) as e:  # no CUDA backend / ptxas in this triton
        print(f"cannot compile for sm_90 here: {e}", file=sys.stderr)
        return None
    return compiled.asm["ptx"]


def _fma_of_exp2(ptx: str) -> int:
    """How many FMAs take a register written by ex2 as one of their two factors."""
    from_exp2, count = set(), 0
    for line in ptx.splitlines():
        m = re.match(r"\s*([a-z0-9_.]+)\s+(%[a-z]+\d+)\s*,\s*([^;]*);", line)
        if not m:
            continue
        op, dst, rest = m.groups()
        srcs = re.findall(r"%[a-z]+\d+", rest)
        if op.startswith("fma") and any(s in from_exp2 for s in srcs[:2]):
            count += 1
        if op.startswith("ex2"):
            from_exp2.add(dst)
    return count


def _child(dtype_name: str, shape: tuple, force_fusion: bool) -> dict:
    """Compile in a child process: the kernels must be JIT functions, not the interpreter's."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, __file__, dtype_name, str(int(force_fusion)), *map(str, shape)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# (GQA group, block count, head dim): the benchmark-like shape, a group of one with the smallest
# budget and an odd head dim, and the widest group with a budget past the 4 blocks of the row.
@pytest.mark.parametrize("dtype_name,shape", [("float32", (4, 4, 32)), ("bfloat16", (4, 4, 32)),
                                              ("bfloat16", (1, 1, 17)), ("float32", (32, 17, 64))])
def test_selection_group_sums_are_not_contracted(dtype_name, shape):
    got = _child(dtype_name, shape, False)
    if got.get("skip"):
        pytest.skip(got["skip"])
    assert got["exp2"] > 0  # the probabilities are in this code
    assert got["fma_of_exp2"] == 0
    if shape == (4, 4, 32) and dtype_name == "float32":  # the check sees the contraction when allowed
        assert _child(dtype_name, shape, True)["fma_of_exp2"] > 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    kernel, args, meta = _recorded_launch(getattr(torch, sys.argv[1]), *map(int, sys.argv[3:6]))
    if sys.argv[2] == "1":
        meta["enable_fp_fusion"] = True
    ptx = _ptx(kernel, args, meta)
    if ptx is None:
        print(json.dumps({"skip": "triton cannot compile for sm_90 here"}))
    else:
        print(json.dumps({"exp2": ptx.count("ex2.approx"), "fma_of_exp2": _fma_of_exp2(ptx)}))
