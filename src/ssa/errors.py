"""Errors meant for the user.

Kept out of `ssa.cli` so that `python -m ssa.cli` (where that module runs as `__main__`) and the
commands it imports share one class.
"""


class CommandError(Exception):
    """An error meant for the user: the CLI prints it as one line and exits with status 2."""
