"""Where the GPU time of a training step goes: torch.profiler over a few steps per method, kernel time
grouped by what the kernel does. `python benchmarks/profile_step.py OUT.json [--methods full,ssa]`.

Same model and step as `ssa bench train-step` (300m preset, 8k tokens, bf16 autocast, fused AdamW).
Prints, per method, the GPU time per step of each kernel group and the top kernels, then the
difference ssa - full by group; writes everything to OUT.json.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from ssa.commands.bench import preset_shape, training_step

# First match wins; the names are CUDA kernel names as the profiler reports them.
GROUPS = [
    ("selection (triton)", r"_select_kernel"),
    ("sparse attn fwd (triton)", r"^_fwd_kernel"),
    ("sparse attn dq + index counts (triton)", r"^_dq_kernel"),
    ("sparse attn dk/dv (triton)", r"^_dkdv_kernel"),
    ("inverted index (triton)", r"_scan_kernel|_scatter|_items_kernel|_count_kernel"),
    ("alignment (triton)", r"^_align"),
    ("SDPA flash fwd/bwd", r"flash|fmha|cudnn|attention"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|sm90_|cublas|wgmma"),
    ("optimizer", r"multi_tensor|adam|Adam|foreach"),
    ("reductions", r"reduce|Reduce|sum|norm|softmax|cross_entropy|nll|log_softmax|scan"),
    ("copies / casts", r"copy|Copy|cast|to_copy|CatArrayBatched|fill|Fill|memcpy|Memcpy|memset|index|gather|scatter"),
    ("elementwise", r"elementwise|vectorized|unrolled|Elementwise"),
]


def group_of(name: str) -> str:
    for group, pattern in GROUPS:
        if re.search(pattern, name):
            return group
    return "other"


def profile_method(method: str, shape: dict, steps: int) -> dict:
    step, model = training_step(method, shape, 50257, 1, 8192)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
    wall = start.elapsed_time(end) / steps
    kernels = defaultdict(lambda: [0.0, 0])
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[evt.name]
            k[0] += evt.device_time_total / 1e3 / steps  # ms per step
            k[1] += 1
    groups = defaultdict(float)
    for name, (ms, _) in kernels.items():
        groups[group_of(name)] += ms
    del model, step
    torch.cuda.empty_cache()
    return {
        "method": method,
        "wall_ms_per_step": wall,
        "kernel_ms_per_step": sum(groups.values()),
        "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "top_kernels": sorted(([n, ms, c // steps] for n, (ms, c) in kernels.items()), key=lambda r: -r[1])[:40],
    }


def host_time(method: str, shape: dict, steps: int = 10) -> dict:
    """Host time to enqueue one step (no sync inside) against the GPU time of the same steps: when
    the two are close, the GPU waits on Python and kernel launches part of the time."""
    import time

    step, model = training_step(method, shape, 50257, 1, 8192)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host = []
    start.record()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        host.append((time.perf_counter() - t0) * 1e3)
    end.record()
    end.synchronize()
    del model, step
    torch.cuda.empty_cache()
    host.sort()
    return {"method": method, "host_ms_per_step_median": host[len(host) // 2],
            "gpu_ms_per_step": start.elapsed_time(end) / steps}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out")
    p.add_argument("--methods", default="full,ssa")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--preset", default="300m")
    p.add_argument("--host-only", action="store_true", help="only the host enqueue time vs GPU time per step")
    args = p.parse_args()
    shape = preset_shape(args.preset, seq_len=8192)
    if args.host_only:
        res = [host_time(m, shape) for m in args.methods.split(",")]
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
        for r in res:
            print(f"{r['method']}: host {r['host_ms_per_step_median']:.1f} ms/step to enqueue, "
                  f"GPU {r['gpu_ms_per_step']:.1f} ms/step", flush=True)
        return
    res = [profile_method(m, shape, args.steps) for m in args.methods.split(",")]
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    for r in res:
        print(f"\n## {r['method']}: wall {r['wall_ms_per_step']:.1f} ms/step, kernels {r['kernel_ms_per_step']:.1f} ms")
        for g, ms in r["groups"].items():
            print(f"  {g:42s} {ms:7.2f} ms")
        for name, ms, count in r["top_kernels"][:12]:
            print(f"    {ms:7.2f} ms  x{count:<4d} {name[:110]}")
    if len(res) == 2:
        a, b = res
        print(f"\n## {b['method']} - {a['method']} by group (ms per step)")
        for g in sorted(set(a["groups"]) | set(b["groups"]), key=lambda g: -(b["groups"].get(g, 0) - a["groups"].get(g, 0))):
            print(f"  {g:42s} {b['groups'].get(g, 0) - a['groups'].get(g, 0):+7.2f}")


if __name__ == "__main__":
    main()
