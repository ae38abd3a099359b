"""Modes for files and directories written through `tempfile`.

`tempfile.mkstemp` creates files 0600 and `mkdtemp` directories 0700 whatever the umask, and
safetensors writes its weight files 0600 too.
Checkpoints and results written that way and then renamed into place would be unreadable to
anyone else, so the atomic writers give them the mode a plain `open()` / `mkdir()` would have.
"""

from __future__ import annotations

import os


def umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path, directory: bool = False) -> None:
    """chmod `path` to 0666 (files) or 0777 (directories) minus the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def apply_umask_tree(root) -> None:
    """`apply_umask` on `root` and everything under it (safetensors also writes its files 0600)."""
    apply_umask(root, directory=True)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            apply_umask(os.path.join(dirpath, name), directory=True)
        for name in files:
            apply_umask(os.path.join(dirpath, name))
