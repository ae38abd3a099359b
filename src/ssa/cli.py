"""The `ssa` command.

Each subcommand lives in its own module under `ssa.commands` and exposes two functions:
`add_arguments(parser)` and `run(args) -> int`. Modules are imported lazily so that
`ssa --help` stays fast and a broken optional dependency only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from ssa.errors import CommandError  # re-exported: commands raise it

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("ssa.commands.demo", "FullAttn vs SSA on a CPU task, read in full and sparse mode (minutes)"),
    "train": ("ssa.commands.train", "train a model from a preset or config file"),
    "eval": ("ssa.commands.evaluate", "perplexity, budgets, lengths and attention statistics of a checkpoint"),
    "report": ("ssa.commands.report", "markdown tables and plots comparing evaluated runs"),
    "compare": ("ssa.commands.compare", "train methods side by side, evaluate them alike, judge the paper's claims"),
    "bench": ("ssa.commands.bench", "GPU benchmarks of the attention kernels and training steps"),
    "generate": ("ssa.commands.generate", "stream text from a checkpoint"),
    "data": ("ssa.commands.data", "tokenize corpora into memory-mapped token shards for training"),
    "convert": ("ssa.commands.convert", "convert checkpoints (ssa train -> HF, Llama -> SSA)"),
}


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The `ssa` parser. Only the subcommands named in `commands` (default: all) get their full
    arguments, which means importing their modules; the others are listed with their help line."""
    parser = argparse.ArgumentParser(prog="ssa", description="Sparse Sparse Attention toolkit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name) is None:  # command not available in this build
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        if commands is None or name in commands:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand an argument list names: its first word that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the chosen command's module is imported: `ssa --help` and a mistyped command stay fast.
    parser = build_parser(commands=[_command_of(argv)])
    args = parser.parse_args(argv)
    args._argv = argv  # for commands that record how they ran
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
