"""Run one selection (B=1, HQ=16, HK=1, d=64, s=16, n=16, bf16) for Nsight Compute:
`ncu --clock-control none -k regex:_select_kernel --launch-skip 1 --launch-count 1 python benchmarks/ncu_select.py T '{"KERNEL": "v3"}'`
(the first launch compiles and is skipped; the second is the one profiled)."""

import json
import sys

import torch

from ssa.ops import select_blocks
from ssa.ops.triton import _select

T = int(sys.argv[1])
for name, value in json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}").items():
    setattr(_select, name, value)
g = torch.Generator(device="cuda").manual_seed(T)
q = torch.randn(1, T, 16, 64, device="cuda", dtype=torch.bfloat16, generator=g)
k = torch.randn(1, T, 1, 64, device="cuda", dtype=torch.bfloat16, generator=g)
for _ in range(2):
    select_blocks(q, k, 16, 16, 0.125, backend="triton")
torch.cuda.synchronize()
