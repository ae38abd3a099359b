"""Sparse vs dense decoding under CUDA graphs: `python benchmarks/bench_decode.py [options]`.

Same as `ssa bench decode`; see `ssa bench decode --help` for the options.
"""

import sys

from ssa.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "decode", *sys.argv[1:]]))
