"""One tpgrid process per working directory: the lock, the CLI's refusal, concurrent runs.

Every other holder here is a real process: flock excludes open files, so the contention and
the release at a process's death are only real across processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from tests.conftest import DaskProcesses
from tests.test_runs import write_config
from tpgrid.cli import app
from tpgrid.config import load_pipeline
from tpgrid.errors import WorkdirBusyError
from tpgrid.lock import LOCK_NAME, Holder, read_holder, workdir_lock, workdir_locks
from tpgrid.runs import list_runs

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


# --- the CLI -------------------------------------------------------------------------------

#: Each writing command, with the working directory ("work") whose lock it needs. None of the
#: inputs exist: a command that did not check the lock first would fail on them instead.
WRITING_COMMANDS = {
    "run": "run {config}",
    "run --if-changed": "run {config} --if-changed",
    "demo": "demo --out {work}",
    "cube": "cube --catalog catalog.yaml --grid grid.yaml --out {work}/cube.zarr",
    "fit": "fit --sites sites.csv --cube {work}/cube.zarr --out {work}/models",
    "predict": "predict --cube {work}/cube.zarr --models {work}/models "
    "--out {work}/prediction.zarr",
    # Maps elsewhere, published into the locked directory.
    "predict --publish": "predict --cube {work}/cube.zarr --models {work}/models "
    "--out {elsewhere}/prediction.zarr --publish {work}/published",
    "report": "report --models {work}/models --out {work}/report",
    "runs --prune": "runs {config} --prune 1",
}


def command_line(name: str, tmp_path: Path) -> list[str]:
    places = {
        "work": str(tmp_path / "work"),
        "elsewhere": str(tmp_path / "elsewhere"),
        "config": str(write_config(tmp_path / "work")),
    }
    return [arg.format(**places) for arg in WRITING_COMMANDS[name].split()]


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("name", WRITING_COMMANDS)
def test_a_writing_command_is_refused_while_its_workdir_is_held(
    name: str, tmp_path: Path, holders: list[HolderProcess]
) -> None:
    args = command_line(name, tmp_path)
    holder = hold(holders, tmp_path / "work")
    before = files_under(tmp_path)
    result = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # an exit, not an exception's traceback
    assert "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert message.count("error:") == 1
    assert f"is in use by another tpgrid process (pid {holder.pid} on" in message
    assert "--wait" in message
    # Nothing written; at most an empty lock file for a directory it locked before this one.
    after = files_under(tmp_path)
    new_empty_locks = {
        path for path, content in after.items() if path.endswith(LOCK_NAME) and not content
    } - set(before)
    assert {path: after[path] for path in set(after) - new_empty_locks} == before


def test_a_command_releases_its_lock_when_it_ends(tmp_path: Path) -> None:
    args = command_line("runs --prune", tmp_path)
    runner = CliRunner()
    # In one process, a lock not released would refuse the second command like another's.
    for _ in range(2):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert read_holder(tmp_path / "work") is None


def test_runs_and_dry_run_only_read_and_take_no_lock(
    tmp_path: Path, holders: list[HolderProcess]
) -> None:
    config = command_line("run", tmp_path)[1]
    holder = hold(holders, tmp_path / "work")
    runner = CliRunner()
    listed = runner.invoke(app, ["runs", config])
    assert listed.exit_code == 0, listed.output
    planned = runner.invoke(app, ["run", config, "--dry-run"], env={"COLUMNS": "250"})
    assert planned.exit_code == 0, planned.output
    assert "would build" in planned.output
    assert recorded_pid(tmp_path / "work") == holder.pid


# --- concurrent pipeline runs, each a real `tpgrid run` process ----------------------------

TPGRID = str(Path(sys.executable).with_name("tpgrid"))  # where pip put the command


class TpgridRun:
    """`tpgrid run CONFIG --scheduler-address ADDRESS [options]` in the background; its
    output goes to files (progress bars would fill a pipe nobody reads)."""

    def __init__(self, config: Path, address: str, logs: Path, *options: str) -> None:
        self.workdir = config.with_suffix("")  # write_config puts the YAML beside the workdir
        self.stderr = logs.with_suffix(".stderr")
        with logs.with_suffix(".stdout").open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [TPGRID, "run", str(config), "--scheduler-address", address, *options],
                stdout=out,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """Its stderr (the console's messages), whitespace collapsed (rich wraps lines)."""
        return " ".join(self.stderr.read_text().split())

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition`` while this run goes on; fail if it ends first."""
        deadline = time.monotonic() + HANG_GUARD
        while not condition():
            assert self.process.poll() is None, f"ended before {what}: {self.output()}"
            assert time.monotonic() < deadline, f"hang guard: not {what}"
            time.sleep(0.1)

    def wait_for_the_lock(self) -> None:
        self.wait_until(lambda: recorded_pid_or_none(self.workdir) == self.pid, "holding the lock")

    def wait(self) -> int:
        return self.process.wait(HANG_GUARD)


def recorded_pid_or_none(directory: Path) -> int | None:
    holder = read_holder(directory)
    return None if holder is None else holder.pid


@pytest.fixture(scope="module")
def scheduler_address(dask_processes: DaskProcesses) -> str:
    return dask_processes.address


@pytest.fixture(scope="module")
def lone_run(scheduler_address: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workdir of the test pipeline run alone, to compare concurrent runs with."""
    root = tmp_path_factory.mktemp("lone")
    alone = TpgridRun(write_config(root / "work"), scheduler_address, root / "run")
    assert alone.wait() == 0, alone.output()
    return root / "work"


def copy_of(workdir: Path, tmp_path: Path) -> Path:
    """A copy of a finished run's workdir and its config (a re-run of it changes nothing)."""
    shutil.copytree(workdir, tmp_path / "work", symlinks=True)
    return write_config(tmp_path / "work")


def prediction_chunks(workdir: Path) -> dict[str, bytes]:
    """The chunk files of the prediction group (its metadata names paths, which differ)."""
    prediction = workdir / "prediction.zarr"
    chunks = {path: content for path, content in files_under(prediction).items() if "/c/" in path}
    assert chunks, f"no chunk files in {prediction}"
    return chunks


def published_maps(workdir: Path) -> dict[str, np.ndarray]:
    current = workdir / "published" / "current"
    maps = {}
    for cog in sorted(current.glob("*.tif")):
        with rasterio.open(cog) as src:
            maps[cog.name] = src.read()
    assert maps, f"no COGs in {current}"
    return maps


def steps_of(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in record["steps"]}


@pytest.mark.slow
@pytest.mark.cluster
def test_a_second_run_is_refused_and_the_first_ends_as_if_alone(
    scheduler_address: str, lone_run: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "work")
    first = TpgridRun(config, scheduler_address, tmp_path / "first")
    first.wait_for_the_lock()
    # Paused, the first run surely still holds the lock when the second one asks for it.
    first.process.send_signal(signal.SIGSTOP)
    try:
        second = TpgridRun(config, scheduler_address, tmp_path / "second")
        assert second.wait() == 2
    finally:
        first.process.send_signal(signal.SIGCONT)
    refusal = second.output()
    assert f"is in use by another tpgrid process (pid {first.pid} on" in refusal
    assert refusal.count("error:") == 1
    assert "Traceback" not in refusal
    assert first.wait() == 0, first.output()

    (record,) = list_runs(load_pipeline(config))  # the refused run left no record
    assert record["status"] == "ok"
    assert prediction_chunks(tmp_path / "work") == prediction_chunks(lone_run)
    ours, alone = published_maps(tmp_path / "work"), published_maps(lone_run)
    assert ours.keys() == alone.keys()
    for name, pixels in ours.items():
        np.testing.assert_array_equal(pixels, alone[name], err_msg=name)


@pytest.mark.slow
@pytest.mark.cluster
def test_with_wait_a_second_run_starts_when_the_first_ends(
    scheduler_address: str, lone_run: Path, tmp_path: Path
) -> None:
    config = copy_of(lone_run, tmp_path)
    first = TpgridRun(config, scheduler_address, tmp_path / "first")
    first.wait_for_the_lock()
    first.process.send_signal(signal.SIGSTOP)
    try:
        second = TpgridRun(config, scheduler_address, tmp_path / "second", "--wait")
        second.wait_until(lambda: "waiting for it to finish" in second.output(), "waiting")
    finally:
        first.process.send_signal(signal.SIGCONT)
    assert f"(pid {first.pid} on" in second.output()
    assert first.wait() == 0, first.output()
    assert second.wait() == 0, second.output()

    _lone, by_first, by_second = list_runs(load_pipeline(config))
    assert by_second["started"] >= by_first["finished"]
    assert by_second["status"] == "ok"
    steps = steps_of(by_second)
    assert {name: step["action"] for name, step in steps.items()} == dict.fromkeys(
        ("plateau", "cube", "fit", "predict", "publish"), "unchanged"
    )
    assert steps["fit"]["counts"] == {"refitted": 0}
    assert steps["predict"]["counts"] == {"chunks_computed": 0}


@pytest.mark.slow
@pytest.mark.cluster
def test_a_run_killed_holding_the_lock_does_not_block_the_next(
    scheduler_address: str, lone_run: Path, tmp_path: Path
) -> None:
    config = copy_of(lone_run, tmp_path)
    killed = TpgridRun(config, scheduler_address, tmp_path / "killed")
    killed.wait_for_the_lock()
    killed.process.send_signal(signal.SIGSTOP)  # surely still running, and holding the lock
    killed.process.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert recorded_pid(tmp_path / "work") == killed.pid  # its record stays; its lock did not

    after = TpgridRun(config, scheduler_address, tmp_path / "after")  # no --wait
    assert after.wait() == 0, after.output()
    assert list_runs(load_pipeline(config))[-1]["status"] == "ok"
