"""The `ssa` command.

Each subcommand lives in its own module under `ssa.commands` and exposes two functions:
`add_arguments(parser)` and `run(args) -> int`. Modules are imported lazily so that
`ssa --help` stays fast and a broken optional dependency only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ssa.errors import CommandError  # re-exported: commands raise it

# name -> (module, one-line help)
COMMANDS = {
    "train": ("ssa.commands.train", "train a model from a preset or config file"),
    "eval": ("ssa.commands.evaluate", "perplexity, budgets, lengths and attention statistics of a checkpoint"),
    "report": ("ssa.commands.report", "markdown tables and plots comparing evaluated runs"),
    "compare": ("ssa.commands.compare", "train methods side by side, evaluate them alike, judge the paper's claims"),
    "bench": ("ssa.commands.bench", "GPU benchmarks of the attention kernels and training steps"),
    "generate": ("ssa.commands.generate", "stream text from a checkpoint"),
    "data": ("ssa.commands.data", "tokenize corpora into memory-mapped token shards for training"),
    "convert": ("ssa.commands.convert", "convert checkpoints (ssa train -> HF, Llama -> SSA)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssa", description="Sparse Sparse Attention toolkit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:  # command not available in this build
                continue
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # for commands that record how they ran
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (CommandError, ValueError, TypeError, OSError) as err:
        # User-facing failures (bad input, a missing file, a full disk) are one line; set
        # SSA_DEBUG=1 for the traceback.
        import os

        if os.environ.get("SSA_DEBUG"):
            raise
        print(f"ssa {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
