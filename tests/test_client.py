"""Cluster specs and clients: local, an existing multi-process scheduler, missing backends."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import DaskProcesses
from tpgrid.client import (
    AddressSpec,
    JobqueueSpec,
    LocalSpec,
    SchedulerFileSpec,
    client_when_needed,
    dask_client,
    load_cluster_spec,
    parse_cluster_spec,
)
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
