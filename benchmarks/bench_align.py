"""Alignment loss, eager reference vs the fused Triton kernels: `python benchmarks/bench_align.py [options]`.

Needs a CUDA GPU. Times forward alone and forward + backward (triton.testing.do_bench, median) for
every direction and distance at one layer's attention-output shape, default [1, 8192, 16, 64] bf16,
and prints a table with the fused path's speed-up and effective memory bandwidth.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ssa import ops

DIRECTIONS = ("both", "sparsity", "commitment")
KINDS = ("smooth_l1", "l2")


def _bytes_moved(numel: int, itemsize: int, direction: str, backward: bool) -> int:
    """Minimum HBM traffic of the fused path: read a and b forward, again backward, write the grads."""
    reads = 2 * numel * itemsize
    if not backward:
        return reads
    grads = 2 if direction == "both" else 1
    return 2 * reads + grads * numel * itemsize


def bench_alignment(shape=(1, 8192, 16, 64), dtype=torch.bfloat16, directions=DIRECTIONS, kinds=KINDS,
                    warmup: int = 25, rep: int = 100) -> list[dict]:
    """One row per (direction, kind): reference and fused times in ms, for fwd and fwd+bwd."""
    import triton.testing

    if not torch.cuda.is_available():
        raise RuntimeError("bench_alignment needs a CUDA GPU (the fused kernels are GPU kernels)")
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(shape, device="cuda", dtype=dtype, generator=g).requires_grad_()
    b = (a.detach() + 0.8 * torch.randn(shape, device="cuda", dtype=dtype, generator=g)).requires_grad_()

    def ms(fn):
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=[a, b], return_mode="median")

    rows = []
    for direction in directions:
        for kind in kinds:
            row = {"direction": direction, "kind": kind}
            for backend in ("torch", "triton"):
                def forward(direction=direction, kind=kind, backend=backend):
                    return ops.alignment_loss(a, b, direction, kind, backend=backend)

                with torch.no_grad():
                    row[f"{backend}_fwd_ms"] = ms(forward)
                row[f"{backend}_fwdbwd_ms"] = ms(lambda forward=forward: forward().backward())
            # Correctness at this size, so a fast wrong kernel cannot hide in the table.
            losses, grads = [], []
            for backend in ("torch", "triton"):
                a.grad = b.grad = None
                loss = ops.alignment_loss(a, b, direction, kind, backend=backend)
                loss.backward()
                losses.append(loss.item())
                grads.append([x.grad.float() if x.grad is not None else None for x in (a, b)])
            a.grad = b.grad = None
            row["loss_rel_err"] = abs(losses[1] - losses[0]) / max(abs(losses[0]), 1e-30)
            row["grad_max_abs_err"] = max(
                (float((x - y).abs().max()) for x, y in zip(*grads) if x is not None), default=0.0
            )
            itemsize = a.element_size()
            for key, backward in (("fwd", False), ("fwdbwd", True)):
                row[f"speedup_{key}"] = row[f"torch_{key}_ms"] / row[f"triton_{key}_ms"]
                moved = _bytes_moved(a.numel(), itemsize, direction, backward)
                row[f"triton_{key}_GBps"] = moved / (row[f"triton_{key}_ms"] * 1e-3) / 1e9
            rows.append(row)
    return rows


def print_table(rows: list[dict], shape, dtype) -> None:
    print(f"alignment loss, shape {list(shape)} {str(dtype).removeprefix('torch.')}, "
          f"{torch.cuda.get_device_name()}, do_bench median (ms)")
    header = ("direction", "kind", "ref fwd", "fused fwd", "x", "ref f+b", "fused f+b", "x",
              "fused f+b GB/s", "loss rel err", "grad max err")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for r in rows:
        print(" | ".join([
            r["direction"], r["kind"],
            f"{r['torch_fwd_ms']:.4f}", f"{r['triton_fwd_ms']:.4f}", f"{r['speedup_fwd']:.1f}",
            f"{r['torch_fwdbwd_ms']:.4f}", f"{r['triton_fwdbwd_ms']:.4f}", f"{r['speedup_fwdbwd']:.1f}",
            f"{r['triton_fwdbwd_GBps']:.0f}", f"{r['loss_rel_err']:.1e}", f"{r['grad_max_abs_err']:.1e}",
        ]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[1, 8192, 16, 64], help="[B, T, H, d]")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--direction", choices=DIRECTIONS, help="only this direction (default: all)")
    parser.add_argument("--kind", choices=KINDS, help="only this distance (default: all)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_align.py needs a CUDA GPU", file=sys.stderr)
        return 1
    dtype = getattr(torch, args.dtype)
    rows = bench_alignment(
        tuple(args.shape), dtype,
        directions=(args.direction,) if args.direction else DIRECTIONS,
        kinds=(args.kind,) if args.kind else KINDS,
    )
    print_table(rows, args.shape, dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
