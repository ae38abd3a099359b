"""Run one selection (B=1, HQ=16, HK=1, d=64, s=16, n=16, bf16) for Nsight Compute:
`ncu --clock-control none -k regex:_select_kernel --launch-skip 1 --launch-count 1 python benchmarks/ncu_select.py T '{"block_tile": 64}'`
(the first launch compiles and is skipped; the second is the one profiled). The optional JSON object
holds `SelectLaunch` fields to profile instead of the defaults."""

import json
import sys

import torch

from ssa.ops.triton import _select

T = int(sys.argv[1])
launch = _select.SelectLaunch(**json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}"))
g = torch.Generator(device="cuda").manual_seed(T)
q = torch.randn(1, T, 16, 64, device="cuda", dtype=torch.bfloat16, generator=g)
k = torch.randn(1, T, 1, 64, device="cuda", dtype=torch.bfloat16, generator=g)
for _ in range(2):
    _select.select_blocks(q, k, 16, 16, 0.125, launch=launch)
torch.cuda.synchronize()
