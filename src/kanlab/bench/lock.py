"""One run at a time per run folder: an exclusive, non-blocking lock on ``run_dir/.lock``.

    with RunLock("kanlab-runs/quick"):      # RunInUseError at once if another process holds it
        ...                                 # write sweep.json, open the store, run the trials

The lock is an ``fcntl.flock`` on the file, so the kernel drops it when its process ends, however it
ends (``kill -9`` included): a lock file left behind by a crash holds no lock and is taken over
silently. The holder writes its pid, host, start time and command line into the file, which is how
a refused process names the one in its way. On a clean exit the holder deletes the file (while still
holding the lock; an acquirer that locked a file deleted meanwhile notices and tries again).

Without ``fcntl`` (Windows) a byte far past the file's end is locked with ``msvcrt.locking``
instead (untested there); the file is then left in place on release. On a network file system the
lock is only as good as the file system's ``flock``.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "RunInUseError", "RunLock"]

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class RunInUseError(RuntimeError):
    """Another live process holds the run folder's lock. ``holder``: what it wrote in the lock file
    (``pid``, ``host``, ``started``, ``command``; empty if it had not written it yet)."""

    def __init__(self, run_dir: Path, holder: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.holder = holder
        super().__init__(f"{run_dir} is in use by {describe(holder)}")


def describe(holder: dict[str, Any]) -> str:
    """``kanlab compare (pid 1234, started 20:51:03)`` from a lock file's contents."""
    if not holder:
        return "another process (it has not written its details yet)"
    command = str(holder.get("command") or "an unknown command")
    if len(command) > 60:
        command = command[:57] + "..."
    where = f"pid {holder.get('pid', '?')}"
    if holder.get("host") not in (None, socket.gethostname()):
        where += f" on {holder['host']}"
    started = holder.get("started")
    if isinstance(started, (int, float)):
        fmt = "%H:%M:%S" if time.time() - started < 20 * 3600 else "%Y-%m-%d %H:%M:%S"
        where += f", started {time.strftime(fmt, time.localtime(started))}"
    return f"{command} ({where})"


def command_line(argv: list[str] | None = None) -> str:
    """This process's command line as a user would type it (``python -m kanlab`` -> ``kanlab``)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name in ("__main__.py", "kanlab", "kanlab.exe"):
        argv[0] = "kanlab"
    elif argv and argv[0] in ("-c", ""):
        argv[0] = "python"
    return shlex.join(argv)


class RunLock:
    """The lock of the run folder ``run_dir`` (which must exist).

    Args:
        run_dir: the run folder; the lock file is ``run_dir/.lock``.
        command: the command line written for others to read (default: this process's).

    :meth:`acquire` raises :class:`RunInUseError` at once when another live process holds the lock.
    Use as a context manager (acquire on entry, release on exit), or call the two methods."""

    def __init__(self, run_dir: str | Path, *, command: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = command_line() if command is None else command
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                holder = _read_holder(fd)
                os.close(fd)
                raise RunInUseError(self.run_dir, holder)
            # The previous holder may have deleted the file between our open and our lock: then
            # we hold a lock on a file nobody else will open, so start again on the current one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": self.command}  # fmt: skip
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
        self._fd = fd

    def release(self) -> None:
        """Delete the lock file and release the lock (nothing if not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if fcntl is not None:  # on Windows an open file cannot be deleted: leave it
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    import msvcrt  # pragma: no cover - Windows

    try:  # pragma: no cover
        os.lseek(fd, 1 << 30, os.SEEK_SET)  # not the contents: Windows locks are mandatory
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # pragma: no cover
        return False
    return True  # pragma: no cover


def _read_holder(fd: int) -> dict[str, Any]:
    # The holder writes its details just after locking: give it a moment if the file is empty.
    for _ in range(20):
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            data = json.loads(os.read(fd, 4096).decode("utf-8"))
        except (ValueError, OSError):
            data = None
        if isinstance(data, dict):
            return data
        time.sleep(0.05)
    return {}
