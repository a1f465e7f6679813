"""Dask clients from a cluster spec: local, an existing scheduler, SLURM/PBS, Kubernetes, Coiled.

A spec is a small YAML file (see ``cluster/*.yaml``)::

    kind: local            # local | address | scheduler_file | slurm | pbs | kubernetes | coiled
    workers: 2
    threads_per_worker: 1

Backends other than ``local``/``address``/``scheduler_file`` are imported only when a spec
asks for them, and a missing one is a :class:`ClusterError` naming the extra to install.
Workers get ``NUMBA_NUM_THREADS=1`` (Dask supplies the parallelism; the kernels must not start
their own thread pools inside worker threads) and a shared ``NUMBA_CACHE_DIR`` where the backend
lets us set environment variables, so compiled kernels are reused across worker restarts.

Work is submitted through whatever client is current, so library functions never need one
passed in; the CLI opens one here and closes it when the command ends.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import dask.config
from dask.utils import parse_timedelta
from distributed import Client, LocalCluster
from distributed.core import Status
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from tornado.ioloop import PeriodicCallback

from tpgrid.errors import ClusterError
from tpgrid.tasks import client_on_demand
from tpgrid.yamlfile import read_mapping, validated

ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"
NUMBA_CACHE_DIR = str(Path.home() / ".cache" / "tpgrid" / "numba")


def worker_environment() -> dict[str, str]:
    """Environment variables every worker should have (see the module docstring)."""
    return {
        "NUMBA_NUM_THREADS": "1",
        "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", NUMBA_CACHE_DIR),
    }


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LocalSpec(_Spec):
    """Worker processes on this machine, on 127.0.0.1."""

    kind: Literal["local"] = "local"
    workers: int | None = Field(None, ge=1, description="worker processes; default one per core")
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = Field("auto", description="per worker, e.g. '4GiB'")


class AddressSpec(_Spec):
    """A scheduler that is already running."""

    kind: Literal["address"]
    address: str = Field(description="e.g. tcp://10.0.0.5:8786")


class SchedulerFileSpec(_Spec):
    """A scheduler that wrote its address to a file (``dask scheduler --scheduler-file``)."""

    kind: Literal["scheduler_file"]
    scheduler_file: Path


class JobqueueSpec(_Spec):
    """Workers as batch jobs on an HPC queue (dask-jobqueue); see docs/clusters.md."""

    kind: Literal["slurm", "pbs"]
    jobs: int = Field(1, ge=1, description="batch jobs to submit")
    cores: int = Field(ge=1, description="cores per job")
    memory: str = Field(description="memory per job, e.g. '32GiB'")
    processes: int = Field(1, ge=1, description="worker processes per job")
    walltime: str = "02:00:00"
    queue: str | None = None
    account: str | None = None
    job_name: str = Field("tpgrid-worker", description="what squeue/qstat show")
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = Field(
        (), description="shell lines before the worker starts, e.g. 'module load gdal'"
    )
    interface: str | None = Field(
        None, description="network interface of scheduler and workers, e.g. ib0"
    )
    local_directory: str | None = Field(None, description="worker scratch, on node-local disk")
    log_directory: Path | None = Field(
        None, description="the jobs' stdout/stderr; default: the batch system's (its cwd)"
    )


class KubernetesSpec(_Spec):
    """A Dask cluster made by the dask-kubernetes operator."""

    kind: Literal["kubernetes"]
    name: str = "tpgrid"
    image: str = Field(description="a container image with tpgrid installed")
    workers: int = Field(2, ge=1)
    namespace: str | None = None
    resources: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="{requests: {cpu, memory}, limits: {...}}"
    )


class CoiledSpec(_Spec):
    """A cloud cluster made by Coiled."""

    kind: Literal["coiled"]
    name: str | None = None
    workers: int = Field(4, ge=1)
    worker_memory: str | None = None
    region: str | None = None
    software: str | None = None


ClusterSpec = Annotated[
    LocalSpec | AddressSpec | SchedulerFileSpec | JobqueueSpec | KubernetesSpec | CoiledSpec,
    Field(discriminator="kind"),
]
_SPEC_ADAPTER: TypeAdapter[ClusterSpec] = TypeAdapter(ClusterSpec)

#: The backend module each kind needs, and the pip extra that installs it.
_BACKENDS = {
    "slurm": ("dask_jobqueue", "hpc"),
    "pbs": ("dask_jobqueue", "hpc"),
    "kubernetes": ("dask_kubernetes.operator", "kubernetes"),
    "coiled": ("coiled", "coiled"),
}


def load_cluster_spec(path: str | Path) -> ClusterSpec:
    """Read a cluster spec YAML; every mistake names the file and the key. A relative path in
    it (``scheduler_file``) is relative to the YAML's folder, wherever the command runs."""
    data = read_mapping(path, "cluster spec", "see cluster/*.yaml for examples")
    return resolved_against(
        parse_cluster_spec(data, source=f"cluster spec {path}"), Path(path).parent
    )


def resolved_against(spec: ClusterSpec, folder: Path) -> ClusterSpec:
    """``spec`` with its relative paths (``scheduler_file``) read from ``folder``: the folder
    of the YAML that holds the spec."""
    relative = {
        key: (folder / value).resolve()
        for key in type(spec).model_fields
        if isinstance(value := getattr(spec, key), Path) and not value.is_absolute()
    }
    return spec.model_copy(update=relative) if relative else spec


def parse_cluster_spec(data: Any, source: str = "cluster spec") -> ClusterSpec:
    """Validate a cluster spec given as a mapping (e.g. a section of a pipeline config)."""
    return validated(_SPEC_ADAPTER.validate_python, data, source)


@contextmanager
def dask_client(spec: ClusterSpec | None = None, *, address: str | None = None) -> Iterator[Client]:
    """A client for ``address`` (or ``$DASK_SCHEDULER_ADDRESS``) if given, else for ``spec``,
    else for a LocalCluster of one single-threaded worker process per core.

    A cluster this function starts is closed when the block ends; an existing scheduler is
    left running.
    """
    spec = chosen_spec(spec, address)
    check_spec(spec)
    with ExitStack() as stack:
        if isinstance(spec, AddressSpec):
            client = _connect(spec.address, stack)
        elif isinstance(spec, SchedulerFileSpec):
            client = stack.enter_context(Client(scheduler_file=str(spec.scheduler_file)))
        else:
            cluster = stack.enter_context(_start_cluster(spec))
            client = stack.enter_context(Client(cluster))
        yield client


@contextmanager
def client_when_needed(
    spec: ClusterSpec | None = None,
    *,
    address: str | None = None,
    started: Callable[[Client], None] | None = None,
) -> Iterator[None]:
    """:func:`dask_client` opened only when the first task needs a client (see
    :func:`tpgrid.tasks.client_on_demand`), then ``started(client)``; closed when the block
    ends. The spec is checked at once, so a wrong address or a missing backend fails before
    any work."""
    spec = chosen_spec(spec, address)
    check_spec(spec)
    with ExitStack() as stack:

        def start() -> Client:
            client = stack.enter_context(dask_client(spec))
            if started is not None:
                started(client)
            return client

        with client_on_demand(start):
            yield


def chosen_spec(spec: ClusterSpec | None, address: str | None) -> ClusterSpec:
    """``address`` (or ``$DASK_SCHEDULER_ADDRESS``) if given, else ``spec``, else local."""
    # Set but empty counts as given (and malformed): a blank variable silently starting a
    # local cluster instead of using the intended scheduler would be worse than an error.
    address = address if address is not None else os.environ.get(ADDRESS_ENV)
    if address is not None:
        return AddressSpec(kind="address", address=address)
    return spec or LocalSpec()


def check_spec(spec: ClusterSpec) -> None:
    """A :class:`ClusterError` for what can be known wrong before connecting or starting."""
    if isinstance(spec, AddressSpec):
        check_address(spec.address)
    elif isinstance(spec, SchedulerFileSpec):
        if not spec.scheduler_file.is_file():
            raise ClusterError(
                f"scheduler file {spec.scheduler_file} does not exist: start the scheduler "
                "with `dask scheduler --scheduler-file` first, or fix the path"
            )
    elif not isinstance(spec, LocalSpec):
        _import_backend(spec.kind)


#: ``[scheme://]host:port``: a host name, an IPv4 address or a bracketed IPv6 one.
_ADDRESS = re.compile(
    r"^(?:(?P<scheme>[a-z]+)://)?"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r":(?P<port>[0-9]{1,5})$"
)
_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")


def check_address(address: str) -> None:
    """Raise :class:`ClusterError` for a scheduler address that is not ``scheme://host:port``,
    before anything tries to connect to it (distributed's own parser fails with a bare
    ``ValueError``, or resolves nonsense as a host name)."""
    if address.startswith("inproc://") and len(address) > len("inproc://"):
        return  # a scheduler in this process (LocalCluster(processes=False)): no host or port
    match = _ADDRESS.match(address)
    if (
        match is not None
        and (match["scheme"] or "tcp") in _SCHEMES
        and 0 < int(match["port"]) < 65536
    ):
        return
    raise ClusterError(
        f"scheduler address {address!r} is not of the form tcp://HOST:PORT (e.g. "
        f"tcp://10.0.0.5:8786; {', '.join(s + '://' for s in _SCHEMES[1:])} work too): fix "
        f"--scheduler-address / ${ADDRESS_ENV} / the cluster spec's 'address', or unset "
        f"${ADDRESS_ENV} to start a local cluster"
    )


def _connect(address: str, stack: ExitStack) -> Client:
    try:
        client = Client(address, timeout="10s")
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address}: start it, or fix the address "
            f"(--scheduler-address / ${ADDRESS_ENV} / the cluster spec)"
        ) from exc
    stack.enter_context(client)
    return client


def _start_cluster(
    spec: LocalSpec | JobqueueSpec | KubernetesSpec | CoiledSpec,
) -> Any:
    """A new cluster object (a context manager) for ``spec``."""
    env = worker_environment()
    if isinstance(spec, LocalSpec):
        # Local workers share the terminal's process group: Ctrl-C reaches them too. They
        # ignore it (see dask_setup) and leave it to the client, which stops the run and closes
        # the cluster in order; a worker killed by it would be restarted by its nanny and its
        # tasks retried, so the run went on whenever the client missed the interrupt.
        preload = [*dask.config.get("distributed.worker.preload", []), __name__]
        return LocalCluster(
            n_workers=spec.workers or max(1, os.cpu_count() or 1),
            threads_per_worker=spec.threads_per_worker,
            memory_limit=spec.memory_limit,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            processes=True,
            env=env,
            preload=preload,
        )
    backend = _import_backend(spec.kind)
    if isinstance(spec, JobqueueSpec):
        cluster_class = backend.SLURMCluster if spec.kind == "slurm" else backend.PBSCluster
        cluster = cluster_class(**jobqueue_options(spec, env))
        cluster.scale(jobs=spec.jobs)
        _keep_jobs(cluster, spec.jobs)
        return cluster
    if isinstance(spec, KubernetesSpec):
        return backend.KubeCluster(
            custom_cluster_spec=backend.make_cluster_spec(
                name=spec.name,
                image=spec.image,
                n_workers=spec.workers,
                resources=spec.resources or None,
                env=env,
            ),
            namespace=spec.namespace,
        )
    return backend.Cluster(
        name=spec.name,
        n_workers=spec.workers,
        worker_memory=spec.worker_memory,
        region=spec.region,
        software=spec.software,
        environ=env,
    )


def jobqueue_options(spec: JobqueueSpec, env: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments of dask-jobqueue's ``SLURMCluster``/``PBSCluster`` for ``spec``, with
    ``env`` exported by each job script. The keys a spec may leave out are None then, so a
    site's dask-jobqueue configuration (``~/.config/dask/jobqueue.yaml``) applies to them."""
    return {
        "cores": spec.cores,
        "memory": spec.memory,
        "processes": spec.processes,
        "walltime": spec.walltime,
        "queue": spec.queue,
        "account": spec.account,
        "job_name": spec.job_name,
        "job_extra_directives": list(spec.job_extra_directives),
        "job_script_prologue": [
            *spec.job_script_prologue,
            *(f"export {key}={value}" for key, value in env.items()),
        ],
        "interface": spec.interface,
        "local_directory": spec.local_directory,
        "log_directory": None if spec.log_directory is None else str(spec.log_directory),
    }


#: How often a jobqueue cluster looks for lost jobs to replace.
KEEP_JOBS_EVERY_S = 1.0


def _keep_jobs(cluster: Any, jobs: int) -> None:
    """Submit a new job for each that ends early (cancelled, preempted, out of walltime, its
    node lost), for as long as the cluster runs: else a run goes on with fewer workers, or
    waits forever with none.

    A job is lost when every worker it started has left the scheduler and none came back
    within ``distributed.deploy.lost-worker-timeout``. The cluster forgets such a job itself
    only when it has one worker process (it looks a worker up by the job's name, and the
    workers of a job of several are named ``<job>-0``, ``<job>-1``, ...), and submits no other
    until it is scaled again."""
    # A poll later than the cluster's own check, so that a job with one worker is not both
    # forgotten by it and replaced here.
    grace = parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout"))
    grace += 2 * KEEP_JOBS_EVERY_S
    joined: set[str] = set()  # jobs whose workers have joined the scheduler
    gone_since: dict[str, float] = {}  # of those, the ones without a worker now

    def check() -> None:
        if cluster.status != Status.running:  # not while closing: that scales to zero
            return
        workers = [str(w["name"]) for w in cluster.scheduler_info["workers"].values()]
        now = time.monotonic()
        for job in list(cluster.workers):
            if any(name == job or name.startswith(f"{job}-") for name in workers):
                joined.add(job)
                gone_since.pop(job, None)
            elif job in joined and now - gone_since.setdefault(job, now) > grace:
                joined.discard(job)
                del gone_since[job]
                cluster.loop.add_callback(cluster.workers.pop(job).close)  # its scancel/qdel
        cluster.scale(jobs=jobs)  # submits a job for each one forgotten

    # The cluster stops its periodic callbacks when it closes.
    callback = PeriodicCallback(check, KEEP_JOBS_EVERY_S * 1000)
    cluster.periodic_callbacks["tpgrid-keep-jobs"] = callback
    cluster.loop.add_callback(callback.start)


def dask_setup(worker: Any) -> None:
    """Preload hook of local worker processes: ignore SIGINT (see :func:`_start_cluster`) and
    keep out of the command's terminal what the client reports itself."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("distributed.worker", "distributed.worker.state_machine"):
        logging.getLogger(name).addFilter(_said_by_the_client)


def _said_by_the_client(record: logging.LogRecord) -> bool:
    """False for a failed task's log (the client raises its error again, with the traceback
    when it is not a user error) and for a closing worker's note of each task it stops (a failed
    or interrupted run leaves some running when the cluster closes)."""
    message = str(record.msg)
    return not (message.startswith("Compute Failed") or message.endswith("with CancelledError"))


def _import_backend(kind: str) -> Any:
    module, extra = _BACKENDS[kind]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ClusterError(
            f"a {kind!r} cluster needs the {module.split('.')[0]} package, which is not "
            f'installed: pip install "tpgrid[{extra}]"'
        ) from exc
