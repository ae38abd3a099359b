"""One writer per run directory: RUN_DIR/.lock holds the training process's PID.

The lock is an advisory `flock` on that file, so the kernel releases it when the holder dies,
however it dies. The PID inside is for messages: a second training gets "in use by PID N", and a
file left behind by a killed run (its PID written, nobody holding the flock) is taken over with a
note. A clean exit empties the file rather than deleting it: deleting would let a process that
opened the old file a moment earlier lock an inode nobody else can see.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: fall back to checking whether the recorded PID is alive
    fcntl = None

LOCK_NAME = ".lock"


class RunDirBusy(ValueError):
    """Another process trains into the same run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _prepare_dir(run_dir: Path) -> bool:
    """mkdir -p with a one-line error naming --out; True when this call created it."""
    existed = run_dir.is_dir()
    blocker = next((p for p in [run_dir, *run_dir.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"--out {run_dir}: {blocker} is a file, not a directory; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {run_dir} cannot be created ({err.strerror}); choose a writable --out") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ValueError(f"--out {run_dir} is not writable; choose a writable --out")
    return not existed


class RunDirLock:
    """`with RunDirLock(run_dir):` holds the run directory for this process."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.created_dir = False

    def acquire(self) -> "RunDirLock":
        self.created_dir = _prepare_dir(self.run_dir)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise ValueError(f"--out {self.run_dir}: cannot create {LOCK_NAME} ({err.strerror})") from None
        previous = os.read(fd, 256).decode("utf-8", "replace").split()
        holder = int(previous[0]) if previous and previous[0].isdigit() else None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                busy = False
            except BlockingIOError:
                busy = True
        else:
            busy = holder is not None and holder != os.getpid() and _pid_alive(holder)
        if busy:
            os.close(fd)
            who = f"PID {holder}" + (f" on {previous[1]}" if len(previous) > 1 else "") if holder else "another process"
            raise RunDirBusy(
                f"--out {self.run_dir} is in use by another training ({who}; lock file {self.path}): "
                f"wait for it to finish or choose another --out"
            )
        if holder is not None and holder != os.getpid():
            print(f"ssa train: taking over the lock of {self.run_dir}: PID {holder}, which wrote it, "
                  f"is no longer running", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self, *, failed: bool = False) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)  # a clean exit leaves no PID behind (see the module docstring)
        os.close(self.fd)
        self.fd = None
        if failed and self.created_dir and [p.name for p in self.run_dir.iterdir()] == [LOCK_NAME]:
            # A run refused before it wrote anything leaves no directory behind.
            self.path.unlink(missing_ok=True)
            self.run_dir.rmdir()

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(failed=exc_type is not None)
