"""One training step (forward, backward, AdamW) per method: `python benchmarks/bench_train_step.py [options]`.

Same as `ssa bench train-step`; see `ssa bench train-step --help` for the options.
"""

import sys

from ssa.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train-step", *sys.argv[1:]]))
