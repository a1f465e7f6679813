"""A single-node SLURM cluster on this machine, for tests: real munged, slurmctld and slurmd.

Everything lives under one temporary folder (munge key and socket, ``slurm.conf``, state,
spool and logs) and the daemons listen on free ports, so nothing of the machine's own SLURM or
munge setup (if any) is read or changed. Client commands (``sbatch``, ``squeue``, ...) find
this cluster through ``SLURM_CONF`` in :attr:`Slurm.env`; a process started with that
environment (e.g. ``tpgrid run`` with a ``kind: slurm`` cluster spec) submits its jobs here.

Needs root (slurmd runs jobs as their user, munged and slurmd must be root to do so) and
Debian's ``slurm-wlm`` and ``munge`` packages: :func:`ensure_binaries` installs them when they
are missing and it may, and otherwise says why SLURM cannot be started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

#: The daemons and client commands the cluster needs, all from slurm-wlm and munge.
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
PACKAGES = ("slurm-wlm", "munge")
PARTITION = "tpgrid"
#: Cores this node offers (the test machine's 2, whatever the hardware says).
CPUS = 2


def ensure_binaries(timeout: float = 600) -> str | None:
    """``None`` when SLURM can be started here, else the reason it cannot (to skip with).

    As root, missing binaries are installed with apt-get (quietly, within ``timeout``)."""
    if os.geteuid() != 0:
        return "a SLURM cluster needs root (munged and slurmd run jobs as their user)"
    if _missing() and (reason := _apt_install(timeout)) is not None:
        return reason
    if missing := _missing():
        return f"apt-get installed {' '.join(PACKAGES)} but {', '.join(missing)} still missing"
    return None


def _missing() -> list[str]:
    return [name for name in BINARIES if shutil.which(name, path=_PATH) is None]


#: The daemons are in sbin, which a non-login root shell may not have on PATH.
_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _apt_install(timeout: float) -> str | None:
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    # A fresh container has no package lists: fetch them and try once more.
    for commands in ([install], [["apt-get", "update", "-q"], install]):
        for command in commands:
            if (reason := _apt(command, timeout)) is not None:
                break
        if reason is None:
            return None
    return reason


def _apt(command: list[str], timeout: float) -> str | None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        return "slurm-wlm/munge are not installed and there is no apt-get to install them"
    except subprocess.TimeoutExpired:
        return f"`{' '.join(command)}` did not finish within {timeout:.0f} s"
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        return f"`{' '.join(command)}` failed (exit {result.returncode}): {tail}"
    return None


@dataclass
class Slurm:
    """A running single-node cluster; :attr:`env` points client commands at it."""

    root: Path
    conf: Path
    node: str
    partition: str = PARTITION
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with ``SLURM_CONF`` set to this cluster's."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": _PATH}

    def command(self, *args: str, timeout: float = 30) -> str:
        """The stdout of a SLURM client command run against this cluster."""
        result = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}\n{self.logs()}")
        return result.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job in the queue: id, name, state and node list, as squeue reports them."""
        out = self.command("squeue", "--noheader", "--format=%i|%j|%T|%N|%P")
        keys = ("id", "name", "state", "nodes", "partition")
        return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines()]

    def node_state(self) -> str:
        return self.command("sinfo", "--noheader", "--Node", "--format=%T").strip()

    def logs(self) -> str:
        """The daemons' logs, for a failure message."""
        texts = []
        for log in sorted((self.root / "log").iterdir()):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            texts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(texts)


@contextmanager
def slurm_cluster(root: Path, *, timeout: float = 60) -> Iterator[Slurm]:
    """munged, slurmctld and slurmd started under ``root``; the node idle when this yields.

    On exit every job is cancelled and waited for, then the daemons are stopped, whatever
    happened in the block or while starting."""
    for folder in ("munge", "state", "spool", "log"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    # Private to root: munged's key and socket (munged is started with --force, as it wants
    # every folder above its socket open to all, which pytest's temporary folders are not).
    (root / "munge").chmod(0o700)
    node = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    slurm = Slurm(root=root, conf=conf, node=node)
    with ExitStack() as stack:
        socket_path = _start_munged(root / "munge", slurm, stack)
        conf.write_text(_slurm_conf(root, node, socket_path))
        _daemon(slurm, stack, "slurmctld", "-D", "-c", "-f", str(conf))
        _daemon(slurm, stack, "slurmd", "-D", "-f", str(conf), "-N", node)
        stack.callback(_stop_jobs, slurm)  # before the daemons stop (last in, first out)
        _wait_until(lambda: slurm.node_state() == "idle", timeout, "the node to be idle", slurm)
        yield slurm


def _start_munged(folder: Path, slurm: Slurm, stack: ExitStack) -> Path:
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = folder / "munge.socket"
    _daemon(
        slurm,
        stack,
        "munged",
        "--foreground",
        "--force",
        f"--key-file={key}",
        f"--socket={socket_path}",
        f"--pid-file={folder / 'munged.pid'}",
        f"--seed-file={folder / 'munged.seed'}",
        f"--log-file={slurm.root / 'log' / 'munged.log'}",
    )
    _wait_until(socket_path.exists, 20, "munged's socket", slurm)
    return socket_path


def _slurm_conf(root: Path, node: str, munge_socket: Path) -> str:
    controller_port, node_port = _free_port(), _free_port()
    memory_mib = _memory_mib()
    auth = f"socket={munge_socket}"
    return f"""\
# A single-node cluster for tpgrid's tests (tests/slurm.py): no accounting, no cgroups.
ClusterName=tpgridtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo={auth}
CredType=cred/munge
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# A cancelled job's processes get SIGKILL this many seconds after SIGTERM.
KillWait=5
# The node is what this file says (2 cores), whatever the hardware reports.
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={memory_mib} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _daemon(slurm: Slurm, stack: ExitStack, *command: str) -> None:
    """A daemon in the foreground, stopped (SIGTERM, then SIGKILL) when ``stack`` closes."""
    name = command[0]
    log = (slurm.root / "log" / f"{name}.out").open("wb")
    stack.callback(log.close)
    process = subprocess.Popen(
        [shutil.which(name, path=_PATH) or name, *command[1:]],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=slurm.env,
    )
    slurm.daemons.append(process)
    stack.callback(_stop, process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_jobs(slurm: Slurm) -> None:
    """Cancel every job and wait until its processes are gone; kill what SLURM left."""
    try:
        slurm.command("scancel", f"--partition={slurm.partition}")
        _wait_until(lambda: not slurm.jobs(), 30, "the cancelled jobs to end", slurm)
    except (RuntimeError, subprocess.TimeoutExpired):
        pass  # the controller is not answering: its jobs' processes are ended below
    # A job's processes and their slurmstepd outlive slurmd: end any left, by pid.
    for pid in _job_processes(slurm):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _job_processes(slurm: Slurm) -> list[int]:
    """The pids of this cluster's slurmstepd and job processes: those with our ``SLURM_CONF``
    (slurmd's and the submitter's environment) and a job id or the name slurmstepd."""
    ours = f"SLURM_CONF={slurm.conf}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
            stepd = (proc / "comm").read_text().strip() == "slurmstepd"
        except OSError:
            continue
        if ours in environ and (stepd or any(v.startswith(b"SLURM_JOB_ID=") for v in environ)):
            pids.append(int(proc.name))
    return pids


def _wait_until(condition: Callable[[], bool], timeout: float, what: str, slurm: Slurm) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # not answering yet
        dead = [p.args[0] for p in slurm.daemons if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            reason = f"{', '.join(map(str, dead))} exited" if dead else f"{timeout:.0f} s passed"
            raise RuntimeError(f"waiting for {what}: {reason}\n{slurm.logs()}")
        time.sleep(0.3)
