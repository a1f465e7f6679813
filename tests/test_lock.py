"""One tpgrid process per working directory: the lock, the CLI's refusal, concurrent runs.

Every other holder here is a real process: flock excludes open files, so the contention and
the release at a process's death are only real across processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tpgrid.errors import WorkdirBusyError
from tpgrid.lock import LOCK_NAME, Holder, read_holder, workdir_lock, workdir_locks

#: Hang guard for anything waited on (never an assertion on how long something took).
HANG_GUARD = 300

#: A process that takes the locks of argv[1] (a JSON list of directories), optionally starts a
#: child that inherits every inheritable fd (printing its pid), says "locked", and holds the
#: locks until a line (or the end) of its stdin; then it sleeps a little, so that a waiter is
#: surely blocked on the lock, writes the file argv[2] (if given) and exits.
HOLDER = """
import json, subprocess, sys, time
from pathlib import Path
from tpgrid.lock import workdir_locks
directories, marker, child = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
with workdir_locks([Path(d) for d in directories]):
    if child == "child":
        sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
        print(subprocess.Popen(sleeper, close_fds=False).pid, flush=True)
    print("locked", flush=True)
    sys.stdin.readline()
    time.sleep(0.5)
    if marker:
        Path(marker).write_text("written while holding the lock")
"""


class HolderProcess:
    """A running :data:`HOLDER`; it holds its locks once constructed, until :meth:`release`."""

    def __init__(self, *directories: Path, marker: Path | None = None, child: bool = False) -> None:
        args = [json.dumps([str(d) for d in directories]), str(marker or "")]
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, *args, "child" if child else ""],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.child_pid = int(self.process.stdout.readline()) if child else None
        assert self.process.stdout.readline() == "locked\n"

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("release\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        self.process.kill()
        assert self.process.wait(HANG_GUARD) == -signal.SIGKILL

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()
        if self.child_pid is not None:
            os.kill(self.child_pid, signal.SIGKILL)
        for stream in (self.process.stdin, self.process.stdout):
            assert stream is not None
            stream.close()


@pytest.fixture
def holders() -> Iterator[list[HolderProcess]]:
    """Holders started by a test (append them); killed at its end whatever happened."""
    started: list[HolderProcess] = []
    try:
        yield started
    finally:
        for holder in started:
            holder.stop()


def hold(
    holders: list[HolderProcess],
    *directories: Path,
    marker: Path | None = None,
    child: bool = False,
) -> HolderProcess:
    holder = HolderProcess(*directories, marker=marker, child=child)
    holders.append(holder)
    return holder


def recorded_pid(directory: Path) -> int:
    holder = read_holder(directory)
    assert holder is not None, f"no holder recorded in {directory}"
    return holder.pid


# --- the lock ------------------------------------------------------------------------------


def test_the_lock_records_its_holder_and_forgets_it_on_release(tmp_path: Path) -> None:
    workdir = tmp_path / "new" / "workdir"
    with workdir_lock(workdir) as me:
        recorded = read_holder(workdir)
    assert recorded == me
    assert me.pid == os.getpid()
    assert me.host == socket.gethostname()
    assert datetime.fromisoformat(me.started).utcoffset() is not None
    assert me.command.startswith(Path(sys.argv[0]).name)
    assert read_holder(workdir) is None  # released: the file names nobody
    assert (workdir / LOCK_NAME).read_bytes() == b""


def test_a_held_lock_refuses_naming_its_holder(
    tmp_path: Path, holders: list[HolderProcess]
) -> None:
    holder = hold(holders, tmp_path)
    before = (tmp_path / LOCK_NAME).read_bytes()
    with pytest.raises(WorkdirBusyError) as refused, workdir_lock(tmp_path):
        pytest.fail("the lock was taken while another process held it")
    message = str(refused.value)
    assert f"pid {holder.pid} on {socket.gethostname()}" in message
    assert str(tmp_path) in message
    assert "--wait" in message
    # The refused attempt opened the file without truncating it: the holder is still named.
    assert (tmp_path / LOCK_NAME).read_bytes() == before
    assert read_holder(tmp_path) == Holder.from_json(json.loads(before))
    assert recorded_pid(tmp_path) == holder.pid


def test_the_lock_of_a_killed_holder_is_free_at_once(
    tmp_path: Path, holders: list[HolderProcess]
) -> None:
    holder = hold(holders, tmp_path)
    holder.kill()
    assert recorded_pid(tmp_path) == holder.pid  # its last words
    with workdir_lock(tmp_path) as me:
        assert read_holder(tmp_path) == me


def test_processes_started_by_the_holder_do_not_inherit_the_lock(
    tmp_path: Path, holders: list[HolderProcess]
) -> None:
    holder = hold(holders, tmp_path, child=True)
    holder.kill()
    assert holder.child_pid is not None
    os.kill(holder.child_pid, 0)  # the child lives on (raises if not) ...
    with workdir_lock(tmp_path) as me:  # ... without the lock
        assert read_holder(tmp_path) == me


def test_wait_takes_the_lock_when_the_holder_releases_it(
    tmp_path: Path, holders: list[HolderProcess]
) -> None:
    released = tmp_path / "holder-was-done"
    holder = hold(holders, tmp_path / "workdir", marker=released)
    told: list[str] = []

    def waiting(message: str) -> None:
        told.append(message)
        holder.release()  # only now: we are surely about to wait

    with workdir_lock(tmp_path / "workdir", wait=True, on_wait=waiting) as me:
        # The holder writes the marker just before it releases the lock: if we got the lock
        # before that, the marker would not be there.
        assert released.read_text() == "written while holding the lock"
        assert read_holder(tmp_path / "workdir") == me
    assert holder.process.wait(HANG_GUARD) == 0
    (message,) = told
    assert f"pid {holder.pid}" in message
    assert "waiting" in message


def test_several_locks_are_taken_once_each_and_all_refused_if_one_is_held(
    tmp_path: Path, holders: list[HolderProcess]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with workdir_locks([b, a, b / ".." / "a"]):  # one directory twice: no self-conflict
        assert recorded_pid(a) == recorded_pid(b) == os.getpid()
    holder = hold(holders, b)
    with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid}"), workdir_locks([a, b]):
        pytest.fail("took the locks while one was held")
    assert read_holder(a) is None  # the lock of a was taken, then released when b's failed
    with workdir_lock(a):
        pass
