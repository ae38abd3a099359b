"""Prints the rows where the Triton selection breaks exact ties differently from the closed form.

Used to investigate the native-GPU failure of test_select_blocks_ties_go_to_lower_block.
"""

import torch

from ssa.ops import triton as tri

B, T, HQ, HK, D, s, n = 1, 120, 4, 2, 32, 4, 6
for dtype, seed in ((torch.float32, 0), (torch.bfloat16, 0), (torch.float32, 1), (torch.float32, 2)):
    # The test's inputs: a CPU generator, then moved (seed 0 is the test's).
    q = torch.randn(B, T, HQ, D, generator=torch.Generator().manual_seed(seed)).to("cuda", dtype)
    k = torch.ones(B, T, HK, D, device="cuda", dtype=dtype)
    got = tri.select_blocks(q, k, s, n, D ** -0.5).cpu()
    bad = 0
    for t in range(T):
        chosen = list(range(min(n - 1, t // s))) + [t // s]
        want = chosen + [-1] * (n - len(chosen))
        for h in range(HK):
            row = got[0, t, h].tolist()
            if row != want:
                bad += 1
                if bad <= 12:
                    print(dtype, "t", t, "head", h, "got", row, "want", want)
    print(dtype, "seed", seed, "mismatched rows:", bad, "of", T * HK)
