"""What every ``tpgrid`` command shares: the typer app, its options, and the running of a command.

A command takes the locks of the working directories it writes into, opens a Dask client, shows
progress per chunk, and ends in one red message and an exit code when the user has something to
fix (a :class:`~tpgrid.errors.TpgridError`, a file system error, Ctrl-C), without a traceback.
"""

from __future__ import annotations

import _thread
import functools
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tpgrid.errors import StorageError, TpgridError

if TYPE_CHECKING:
    from tpgrid.client import ClusterSpec

#: `tpgrid run --if-changed` exit code when no input changed (a scheduler can branch on it).
EXIT_UNCHANGED = 3
#: `tpgrid verify` exit code when a stored file does not match its record.
EXIT_DAMAGED = 4
#: Exit code after Ctrl-C: 128 + SIGINT, as shells report a command stopped by it.
EXIT_INTERRUPTED = 130

app = typer.Typer(
    help="1 km soil micronutrient maps of the Tibetan Plateau, on Dask.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
P = ParamSpec("P")
R = TypeVar("R")


def _exit_with(error: TpgridError) -> NoReturn:
    # Notes say where it happened (a chunk task adds its elements, chunk and stores).
    where = "".join(f"\n  {note}" for note in getattr(error, "__notes__", ()))
    console.print(f"[bold red]error:[/] {escape(f'{error}{where}')}", highlight=False)
    raise typer.Exit(code=error.exit_code)


def _checked_address(address: str | None) -> str | None:
    """Refuse a malformed scheduler address as the options are read: before the command takes
    its lock, reads or writes anything, or starts a cluster."""
    from tpgrid.client import ADDRESS_ENV, check_address

    # click reads a set but empty variable as unset; the client counts it as given: check it.
    given = address if address is not None else os.environ.get(ADDRESS_ENV)
    if given is not None:
        try:
            check_address(given)
        except TpgridError as exc:
            _exit_with(exc)
    return address


SchedulerOption = Annotated[
    str | None,
    typer.Option(
        "--scheduler-address",
        envvar="DASK_SCHEDULER_ADDRESS",
        callback=_checked_address,
        help="Use a running Dask scheduler instead of starting a local cluster.",
    ),
]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", help="Worker processes of the local cluster.")
]
ClusterOption = Annotated[
    Path | None,
    typer.Option(
        "--cluster",
        help="Cluster spec YAML (see cluster/): local, address, scheduler_file, slurm, pbs, "
        "kubernetes, coiled.",
    ),
]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output that is not ours to update.")
]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="If another tpgrid process is writing into the same working directory, wait for "
        "it to finish instead of stopping.",
    ),
]


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Show a TpgridError, a file system error (also one raised in a Dask task) or Ctrl-C as
    one red message and exit non-zero, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except TpgridError as exc:
            error: TpgridError = exc
        except OSError as exc:
            if not StorageError.covers(exc):
                raise  # e.g. a lost connection: not the user's file system, keep its traceback
            error = StorageError.from_os_error(exc)
            for note in getattr(exc, "__notes__", ()):
                error.add_note(note)
        except KeyboardInterrupt:
            # Publishing is atomic and prediction resumes from its done markers.
            console.print(
                "[bold red]interrupted:[/] nothing half-done was published; run the same "
                "command again to resume",
                highlight=False,
            )
            raise typer.Exit(code=EXIT_INTERRUPTED) from None
        _exit_with(error)

    return wrapper


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log what is skipped and why.")
    ] = False,
) -> None:
    _rearm_lost_interrupts()
    # zarr warns on every consolidated v3 group; tpgrid writes and reads them on purpose.
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    level = logging.INFO if verbose else logging.WARNING
    # The level goes on the handler too: distributed's loggers set their own level (INFO) and
    # would otherwise print every worker registration through the root handler.
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, level=level)],
    )


def workdir_lock(ctx: typer.Context, directories: list[Path], wait: bool) -> None:
    """Hold the locks of the working directories the command writes into until it ends.

    Call it first, before anything is read or written and before a cluster starts. The locks
    are a resource of the command's context, released when the command returns or fails, so
    its body needs no ``with`` block of its own.
    """
    from tpgrid.lock import workdir_locks

    def waiting(message: str) -> None:
        console.print(f"[yellow]{message}[/]", highlight=False)

    locks = workdir_locks(directories, wait=wait, on_wait=waiting)
    ctx.with_resource(locks)


def _rearm_lost_interrupts() -> None:
    """Make a Ctrl-C that Python drops raise again.

    Python cannot raise an exception out of a destructor, weakref callback or finaliser: it
    hands it to ``sys.unraisablehook`` and goes on. A KeyboardInterrupt landing there (the main
    thread runs many while a run waits on Dask futures) would be lost and the run go on to
    publish. This hook has the main thread interrupted again, from outside the finaliser.
    """
    previous = sys.unraisablehook
    if getattr(previous, "tpgrid_rearms", False):
        return
    rearm = _interrupter()

    def hook(unraisable: Any) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            rearm.set()  # not interrupt_main() here: it would raise inside this hook, and be lost
            return
        previous(unraisable)

    hook.tpgrid_rearms = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


@functools.cache
def _interrupter() -> threading.Event:
    """An event that, once set, has a thread of its own interrupt the main thread."""
    rearm = threading.Event()

    def interrupt_main_when_set() -> None:
        while True:
            rearm.wait()
            rearm.clear()
            _thread.interrupt_main()

    threading.Thread(target=interrupt_main_when_set, name="tpgrid-interrupts", daemon=True).start()
    return rearm


@contextmanager
def command_cluster(
    address: str | None, workers: int | None, spec: ClusterSpec | None = None
) -> Iterator[None]:
    """A Dask client for the command, opened when its first task needs one (a command with
    nothing to compute starts no cluster): ``address`` wins, then ``spec``, then a
    LocalCluster."""
    from tpgrid.client import LocalSpec, client_when_needed

    chosen = spec if spec is not None and workers is None else LocalSpec(workers=workers)

    def started(client: Any) -> None:
        console.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)

    with client_when_needed(chosen, address=address, started=started):
        yield


@contextmanager
def chunk_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar per layer, fed by the cube builder's per-chunk callback."""
    tasks: dict[str, Any] = {}
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:

        def update(layer: str, done: int, total: int) -> None:
            if layer not in tasks:
                tasks[layer] = progress.add_task(layer, total=total)
            progress.update(tasks[layer], completed=done)

        yield update
