"""Native check of the selection's tie rule: the Triton selection against the PyTorch reference on
inputs whose ties are exact (the patterns of tests/test_triton_kernels.py's tie test), row by row.

For every pattern, input dtype and launch setting, prints how many (query, KV head) rows the kernel
and the reference disagree on, then the first rows that differ: query, KV head, both selections and
the reference's group scores. Launch settings never change the answer, so a difference that comes and
goes with them points at code generation rather than at the algorithm.
Usage on a GPU: python3 benchmarks/select_ties_check.py [--max-rows N]
"""

import argparse

import torch

from ssa.ops import reference
from ssa.ops.triton import _select

LAUNCHES = {
    "default": {},
    "no-register-cap": dict(maxnreg=None),
    "one-stage": dict(num_stages=1),
    "tile16": dict(block_tile=16),
    "rows16": dict(rows=16),
    "warps1": dict(num_warps=1),
}


def inputs(pattern: str, device: str):
    B, T, HQ, HK, D, s = 1, 120, 4, 2, 32, 4
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-3 if pattern == "unit_keys" else 1, 4, (B, T, HQ, D), generator=g).float()
    tied = (torch.arange(T) // s) % (3 if pattern == "every_third" else 1) == 0
    key = 1.0 if pattern == "unit_keys" else 0.0
    k = torch.where(tied[None, :, None, None], key, -1.0).expand(B, T, HK, D).contiguous()
    return q.to(device), k.to(device), s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-rows", type=int, default=4)
    p.add_argument("--block-count", type=int, default=6)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n, scale = args.block_count, 0.25
    for pattern in ("zero_keys", "unit_keys", "every_third"):
        q, k, s = inputs(pattern, device)
        ref = reference.select_blocks(q.cpu(), k.cpu(), s, n, scale)
        qc, kc = q.cpu().double(), k.cpu().double()  # the reference's group scores, in float64
        scores = reference.block_scores(qc, reference.block_means(kc, s), 0, s, scale)[0]
        for dtype in (torch.float32, torch.bfloat16):  # every input value is exact in bf16
            for name, launch in LAUNCHES.items():
                got = _select.select_blocks(q.to(dtype), k.to(dtype), s, n, scale,
                                            launch=_select.SelectLaunch(**launch)).cpu()
                rows = (got != ref).any(-1).nonzero().tolist()
                print(f"{pattern} {str(dtype)[6:]} {name}: {len(rows)} of {got.shape[1] * got.shape[2]} rows differ")
                for _, t, h in rows[: args.max_rows]:
                    line = f"  t={t} kv={h} kernel={got[0, t, h].tolist()} reference={ref[0, t, h].tolist()}"
                    line += f" scores={[f'{x:.6g}' for x in scores[0, t, h, : t // s].tolist()]}"
                    print(line)


if __name__ == "__main__":
    main()
