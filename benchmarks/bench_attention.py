"""Sparse attention kernels vs the fastest dense attention (and FlexAttention): `python benchmarks/bench_attention.py [options]`.

Same as `ssa bench attention`; see `ssa bench attention --help` for the options.
"""

import sys

from ssa.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "attention", *sys.argv[1:]]))
