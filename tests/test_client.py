"""Cluster specs and clients: local, an existing multi-process scheduler, missing backends."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from dask_jobqueue import PBSCluster, SLURMCluster
from distributed import Client

from tests.conftest import DaskProcesses, start_dask_processes, stop_dask_processes
from tpgrid.client import (
    AddressSpec,
    JobqueueSpec,
    LocalSpec,
    SchedulerFileSpec,
    client_when_needed,
    dask_client,
    jobqueue_options,
    load_cluster_spec,
    parse_cluster_spec,
)
from tpgrid.engine import wait_for_a_worker
from tpgrid.errors import ClusterError, ConfigError
from tpgrid.tasks import current_client, task_runner

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"


@pytest.mark.slow
@pytest.mark.cluster
def test_local_spec_starts_single_threaded_worker_processes_with_numba_settings() -> None:
    with dask_client(LocalSpec(workers=2)) as client:
        info = client.scheduler_info()["workers"]
        env = client.run(lambda: __import__("os").environ.get("NUMBA_NUM_THREADS"))
    assert len(info) == 2
    assert all(worker["nthreads"] == 1 for worker in info.values())
    assert set(env.values()) == {"1"}


@pytest.mark.cluster
def test_address_connects_to_a_running_scheduler_and_leaves_it_running(
    dask_processes: DaskProcesses,
) -> None:
    with dask_client(AddressSpec(kind="address", address=dask_processes.address)) as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert len(client.scheduler_info()["workers"]) == 2
    with dask_client(address=dask_processes.address) as again:
        assert len(again.scheduler_info()["workers"]) == 2


@pytest.mark.cluster
def test_scheduler_file_connects(dask_processes: DaskProcesses) -> None:
    spec = SchedulerFileSpec(kind="scheduler_file", scheduler_file=dask_processes.scheduler_file)
    with dask_client(spec) as client:
        assert client.scheduler.address == dask_processes.address


@pytest.mark.cluster
def test_environment_address_wins_over_the_spec(
    dask_processes: DaskProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", dask_processes.address)
    with dask_client(LocalSpec(workers=1)) as client:
        assert client.scheduler.address == dask_processes.address


@pytest.mark.slow
def test_unreachable_scheduler_is_a_cluster_error_naming_the_address() -> None:
    expected = r"127\.0\.0\.1:9.*start it, or fix the address"
    with pytest.raises(ClusterError, match=expected), dask_client(address="tcp://127.0.0.1:9"):
        pass


def test_missing_scheduler_file_is_a_cluster_error(tmp_path: Path) -> None:
    spec = SchedulerFileSpec(kind="scheduler_file", scheduler_file=tmp_path / "nope.json")
    with pytest.raises(ClusterError, match=r"nope\.json"), dask_client(spec):
        pass


def test_a_relative_scheduler_file_is_read_from_the_specs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "specs").mkdir()
    spec_file = tmp_path / "specs" / "shared.yaml"
    spec_file.write_text("kind: scheduler_file\nscheduler_file: run/scheduler.json\n")
    monkeypatch.chdir(tmp_path)  # the command runs elsewhere than the spec lives

    spec = load_cluster_spec(Path("specs/shared.yaml"))

    assert isinstance(spec, SchedulerFileSpec)
    assert spec.scheduler_file == tmp_path / "specs" / "run" / "scheduler.json"


def test_backend_without_its_extra_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes `import dask_jobqueue` fail, installed or not.
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    spec = JobqueueSpec(kind="slurm", cores=4, memory="8GiB")
    with pytest.raises(ClusterError, match=r'pip install "tpgrid\[hpc\]"'), dask_client(spec):
        pass


@pytest.mark.parametrize("path", sorted(CLUSTER_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_cluster_spec_is_valid(path: Path) -> None:
    spec = load_cluster_spec(path)
    assert spec.kind == path.stem.replace("-", "_")


def test_unknown_keys_and_kinds_are_config_errors_naming_them() -> None:
    with pytest.raises(ConfigError, match="workerz: unknown key"):
        parse_cluster_spec({"kind": "local", "workerz": 2})
    with pytest.raises(ConfigError, match="yarn"):
        parse_cluster_spec({"kind": "yarn"})


def test_a_client_when_needed_connects_at_the_first_task_and_not_before(
    dask_processes: DaskProcesses,
) -> None:
    opened: list[str] = []
    spec = AddressSpec(kind="address", address=dask_processes.address)
    with client_when_needed(spec, started=lambda c: opened.append(c.scheduler.address)):
        assert opened == []  # nothing needed a client yet
        with task_runner() as runner:
            assert opened == [dask_processes.address]
            assert runner.gather([runner.submit(pow, 2, 10)]) == [1024]
        assert current_client() is not None
        with task_runner():
            assert len(opened) == 1  # the same client, not a second one
    assert current_client() is None  # closed with the block


def test_a_client_when_needed_that_is_never_needed_starts_nothing() -> None:
    opened: list[object] = []
    with client_when_needed(LocalSpec(workers=1), started=opened.append):
        pass
    assert opened == []
    assert current_client() is None


def test_a_client_when_needed_checks_its_spec_at_once(tmp_path: Path) -> None:
    with (
        pytest.raises(ClusterError, match="not of the form"),
        client_when_needed(address="nonsense"),
    ):
        pass
    spec = SchedulerFileSpec(kind="scheduler_file", scheduler_file=tmp_path / "nope.json")
    with pytest.raises(ClusterError, match=r"nope\.json"), client_when_needed(spec):
        pass


@pytest.mark.parametrize(
    ("kind", "directives"),
    [
        (
            "slurm",
            [
                "#SBATCH -J tpgrid-worker",
                "#SBATCH -p short",
                "#SBATCH -A soil",
                "#SBATCH -e {logs}/tpgrid-worker-%J.err",
                "#SBATCH --cpus-per-task=4",
                "#SBATCH --mem=8G",
                "#SBATCH -t 00:30:00",
            ],
        ),
        (
            "pbs",
            [
                "#PBS -N tpgrid-worker",
                "#PBS -q short",
                "#PBS -A soil",
                "#PBS -e {logs}/",
                "#PBS -l walltime=00:30:00",
            ],
        ),
    ],
)
def test_a_jobqueue_spec_becomes_the_job_script_it_says(
    kind: str, directives: list[str], tmp_path: Path
) -> None:
    (tmp_path / "specs").mkdir()
    spec_file = tmp_path / "specs" / f"{kind}.yaml"
    spec_file.write_text(
        f"kind: {kind}\ncores: 4\nmemory: 8GiB\nprocesses: 2\nwalltime: '00:30:00'\n"
        "queue: short\naccount: soil\njob_script_prologue: ['module load gdal']\n"
        "interface: lo\nlocal_directory: /scratch/tpgrid\nlog_directory: logs\n"
    )
    spec = load_cluster_spec(spec_file)
    assert isinstance(spec, JobqueueSpec)
    env = {"NUMBA_NUM_THREADS": "1", "NUMBA_CACHE_DIR": "/shared/numba"}

    cluster_class = SLURMCluster if kind == "slurm" else PBSCluster
    with cluster_class(**jobqueue_options(spec, env)) as cluster:  # submits no job yet
        script = cluster.job_script().splitlines()
        scheduler = cluster.scheduler_address

    logs = tmp_path / "specs" / "logs"  # a relative log folder is read from the spec's folder
    for directive in directives:
        assert directive.format(logs=logs) in script
    # The site's set-up first, then the worker environment, then the worker in this venv.
    start = script.index("module load gdal")
    assert script[start + 1 : start + 3] == [
        "export NUMBA_NUM_THREADS=1",
        "export NUMBA_CACHE_DIR=/shared/numba",
    ]
    worker = script[start + 3].split()
    assert worker[:3] == [sys.executable, "-m", "distributed.cli.dask_worker"]
    assert scheduler.startswith("tcp://127.0.0.1:")  # on the interface asked for, lo
    for option, value in [
        ("--nworkers", "2"),
        ("--nthreads", "2"),
        ("--interface", "lo"),
        ("--local-directory", "/scratch/tpgrid"),
    ]:
        assert worker[worker.index(option) + 1] == value


@pytest.mark.slow
@pytest.mark.cluster
def test_a_run_waits_for_its_first_worker_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler, processes = start_dask_processes(tmp_path, n_workers=0)
    worker = None
    try:
        with Client(processes.address) as client:
            waiting = threading.Thread(target=wait_for_a_worker, args=(client, 1.0))
            with caplog.at_level("WARNING", logger="tpgrid.engine"):
                waiting.start()
                waiting.join(timeout=3.5)
                assert waiting.is_alive()  # no worker: it waits, it does not fail
                dask_cli = str(Path(sys.executable).with_name("dask"))
                worker = subprocess.Popen(
                    [dask_cli, "worker", processes.address, "--nthreads", "1", "--no-nanny"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                waiting.join(timeout=60)
            assert not waiting.is_alive()
        notices = [r.getMessage() for r in caplog.records if "no Dask worker" in r.getMessage()]
        assert len(notices) >= 2
        assert processes.address in notices[0]
        assert "for 1 s" in notices[0]
        assert "for 2 s" in notices[1]
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=20)
        stop_dask_processes(scheduler, processes)
