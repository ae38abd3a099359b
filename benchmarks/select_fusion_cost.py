"""What exact ties cost: the Triton selection as shipped (FP contraction off) against the same launch
with contraction allowed, side by side in one process on one GPU.

The selection kernel is launched with `enable_fp_fusion=False` so that equal probabilities give equal
group scores (see the comment at the launch in ssa/ops/triton/_select.py). This measures what that
costs in time. Shape: B=1, HQ=16, HK=1, d=64, s=16, n=16, bf16 and fp32 inputs.
Usage on a GPU: python3 benchmarks/select_fusion_cost.py [--seq-lens 32768,65536,131072] [--json F]
"""

import argparse
import contextlib
import json

import torch
from triton.testing import do_bench

from ssa.ops import select_blocks
from ssa.ops.triton import _select


@contextlib.contextmanager
def fusion_allowed():
    """Launch the selection kernel with the compiler's default (contraction on) inside this block."""
    shipped = _select._launch_capped

    def launch(kernel, grid, maxnreg, args, meta):
        return shipped(kernel, grid, maxnreg, args, {**meta, "enable_fp_fusion": True})

    _select._launch_capped = launch
    try:
        yield
    finally:
        _select._launch_capped = shipped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-lens", default="32768,65536,131072")
    p.add_argument("--rep-ms", type=int, default=200)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": __import__("triton").__version__}
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for T in map(int, a.seq_lens.split(",")):
            g = torch.Generator(device="cuda").manual_seed(0)
            q = torch.randn(1, T, 16, 64, device="cuda", dtype=dtype, generator=g)
            k = torch.randn(1, T, 1, 64, device="cuda", dtype=dtype, generator=g)
            run = lambda: select_blocks(q, k, block_size=16, block_count=16, backend="triton")  # noqa: E731
            shipped_idx = run()
            with fusion_allowed():
                fused_idx = run()
                fused_ms = do_bench(run, rep=a.rep_ms)
            shipped_ms = do_bench(run, rep=a.rep_ms)
            with fusion_allowed():  # twice, interleaved, so clock drift does not favour one side
                fused_ms = min(fused_ms, do_bench(run, rep=a.rep_ms))
            shipped_ms = min(shipped_ms, do_bench(run, rep=a.rep_ms))
            row = dict(dtype=str(dtype).split(".")[-1], T=T, shipped_ms=shipped_ms, fusion_allowed_ms=fused_ms,
                       cost=shipped_ms / fused_ms - 1,
                       rows_that_differ=int((shipped_idx != fused_idx).any(-1).sum()))
            rows.append(row)
            print(f"{row['dtype']:>8} T={T:>6}: no contraction {shipped_ms:.3f} ms, contraction {fused_ms:.3f} ms "
                  f"({row['cost']:+.1%}); rows whose selection differs: {row['rows_that_differ']}", flush=True)
    if a.json:
        json.dump({"env": env, "rows": rows}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
