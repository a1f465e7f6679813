"""One tpgrid process at a time per working directory.

A command that writes into a working directory first takes an exclusive ``flock`` on
``<directory>/.tpgrid.lock``; a second command on the same directory is refused with
:class:`~tpgrid.errors.WorkdirBusyError` naming the holder, or with ``wait`` blocks until the
holder ends. The lock belongs to the open file, so the kernel releases it when the holder's
process ends in any way, SIGKILL included: there is never a stale lock to remove by hand.
The file itself stays; delete it only when no tpgrid process runs there (a new lock file is
a new lock). Its content (pid, host, start time, command) only says who holds the lock; the
lock is the ``flock``, never the content.

What is relied on: on a local filesystem ``flock`` excludes every other process of the host.
On NFS, Linux emulates ``flock`` with a whole-file ``fcntl`` byte-range lock held through the
server, so it also excludes processes on other clients, as far as the server's locking works
(NFSv4, or NFSv3 with lockd); a client that loses its lease can lose its lock. Filesystems
without locks make ``flock`` fail with an ``OSError``, which is not caught.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tpgrid.errors import WorkdirBusyError

LOCK_NAME = ".tpgrid.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds a working directory's lock, as written into its lock file."""

    pid: int
    host: str
    started: str  # ISO 8601, UTC
    command: str

    @classmethod
    def of_this_process(cls) -> Holder:
        program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=datetime.now(UTC).isoformat(timespec="seconds"),
            command=shlex.join([program, *sys.argv[1:]]),
        )

    @classmethod
    def from_json(cls, doc: Any) -> Holder:
        return cls(int(doc["pid"]), str(doc["host"]), str(doc["started"]), str(doc["command"]))

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}: `{self.command}`"


def lock_path(directory: Path) -> Path:
    return directory / LOCK_NAME


def read_holder(directory: Path) -> Holder | None:
    """The holder recorded in ``directory``'s lock file; None if none is recorded (yet)."""
    try:
        return Holder.from_json(json.loads(lock_path(directory).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def workdir_lock(
    directory: Path, *, wait: bool = False, on_wait: Callable[[str], None] | None = None
) -> Iterator[Holder]:
    """Hold ``directory``'s lock for the ``with`` block (the directory is created if missing).

    Raises WorkdirBusyError when another process holds it, unless ``wait``: then ``on_wait``
    (default: print to stderr) is told once whom we wait for, and the lock is taken when the
    holder ends.
    """
    directory.mkdir(parents=True, exist_ok=True)
    # No O_TRUNC: opening must not wipe the current holder's record. The fd is not inheritable
    # (Python's default, PEP 446): processes we start, such as Dask's LocalCluster workers,
    # must not carry the lock beyond our own end. (A plain fork would still share it; Dask
    # starts its workers with the "spawn" method, which execs.)
    fd = os.open(lock_path(directory), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = read_holder(directory)
            if not wait:
                raise WorkdirBusyError(_busy_message(directory, holder)) from None
            (on_wait or _print_to_stderr)(
                f"{directory} is in use by another tpgrid process ({_who(holder)}); "
                "waiting for it to finish…"
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        me = Holder.of_this_process()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(me)).encode(), 0)
        try:
            yield me
        finally:
            # Still ours while we truncate: the file never names a holder that has finished.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def workdir_locks(
    directories: Iterable[Path],
    *,
    wait: bool = False,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the locks of several directories, each once, taken in sorted order of their
    resolved paths: two commands locking overlapping sets can never wait on each other."""
    distinct = sorted({directory.resolve() for directory in directories})
    with ExitStack() as stack:
        for directory in distinct:
            stack.enter_context(workdir_lock(directory, wait=wait, on_wait=on_wait))
        yield


def _who(holder: Holder | None) -> str:
    # The holder writes its record right after taking the lock: there is a moment without it.
    return str(holder) if holder else "it has not recorded who it is yet"


def _busy_message(directory: Path, holder: Holder | None) -> str:
    return (
        f"{directory} is in use by another tpgrid process ({_who(holder)}). Two runs in one "
        "working directory would overwrite each other's files: wait for it to finish, or "
        "pass --wait to start when it does."
    )


def _print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
