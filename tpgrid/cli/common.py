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
from rich.console import Console, RenderableType
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup

from tpgrid.errors import StorageError, TpgridError

if TYPE_CHECKING:
    from tpgrid.client import ClusterSpec

#: `tpgrid run --if-changed` exit code when no input changed (a scheduler can branch on it).
EXIT_UNCHANGED = 3
#: `tpgrid verify` exit code when a stored file does not match its record.
EXIT_DAMAGED = 4
#: Exit code after Ctrl-C: 128 + SIGINT, as shells report a command stopped by it.
EXIT_INTERRUPTED = 130


class _PlainHelp:
    """Help that reads like a usage line: no ``<bool>`` after a flag, and ``CONFIG`` (not
    ``{config}``) for an argument.

    Typer (0.2x, with its own copy of click) shows every option's Python type, ``<bool>`` for a
    flag too, and writes a required argument as ``{name}`` in the usage line: a flag takes no
    value and braces read as a literal. An empty metavar hides the type; an upper-case one
    names the argument.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
            elif isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = param.name.upper() if param.name else None
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces: list[str] = super().collect_usage_pieces(ctx)  # type: ignore[misc]
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]


class _Command(_PlainHelp, TyperCommand):
    pass


class _Group(_PlainHelp, TyperGroup):
    pass


class _App(typer.Typer):
    """Every command registered on it (by any module) gets the plain help of :class:`_Command`."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _App(
    cls=_Group,
    help="Soil element maps from site tables and covariate rasters, on Dask.",
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


def cluster_spec(path: Path | None) -> ClusterSpec | None:
    """The spec of ``--cluster``, read and checked as the command starts (None: not given)."""
    from tpgrid.client import load_cluster_spec

    return load_cluster_spec(path) if path is not None else None


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


#: Rows of the terminal the progress display leaves to others: the line after it, the cursor.
_ROWS_KEPT_FREE = 2


class _BoundedProgress(Progress):
    """A bar per label, in no more rows than the terminal has.

    A display taller than the terminal is cut at its bottom, where the bars that move are: a
    run's 19 cube bars stayed up and nothing seemed to move after them. So a step's bars (a
    label's first word names its step, e.g. ``cube dem``) fold into one bar for the whole step
    once a later step has begun, and beyond the rows there are only the bars still running and
    the newest are shown, with a "+k more" line for the rest.
    """

    def __init__(self, *columns: Any, console: Console, **options: Any) -> None:
        self._terminal = console  # rich asks for the renderables before it has its console
        super().__init__(*columns, console=console, **options)

    def get_renderables(self) -> Iterator[RenderableType]:
        room = max(2, self._terminal.height - _ROWS_KEPT_FREE)
        rows = _folded_steps(self.tasks, lambda: self.get_time())
        shown = rows if len(rows) <= room else _most_telling(rows, room - 1)
        yield self.make_tasks_table(shown)
        if len(shown) < len(rows):
            yield Text(f"+{len(rows) - len(shown)} more", style="dim")


def _step(task: Task) -> str:
    return task.description.split(" ", 1)[0]


def _folded_steps(tasks: list[Task], get_time: Callable[[], float]) -> list[Task]:
    """The bars of the step begun last as they are; every earlier step's folded into one."""
    if not tasks:
        return []
    current = _step(tasks[-1])
    steps: dict[str, list[Task]] = {}
    for task in tasks:
        steps.setdefault(_step(task), []).append(task)
    rows = []
    for number, (step, members) in enumerate(steps.items(), start=1):
        if step == current or len(members) == 1:
            rows += members
            continue
        folded = Task(
            TaskID(-number),  # rich caches a column's render by task id: none of the bars'
            f"{step} ×{len(members)}",
            total=sum(t.total or 0 for t in members),
            completed=sum(t.completed for t in members),
            _get_time=get_time,
        )
        starts = [t.start_time for t in members if t.start_time is not None]
        folded.start_time = min(starts, default=None)
        if folded.start_time is not None and all(t.finished for t in members):
            ends = [t.start_time + (t.finished_time or 0) for t in members if t.start_time]
            folded.finished_time = max(ends) - folded.start_time
        rows.append(folded)
    return rows


def _most_telling(rows: list[Task], room: int) -> list[Task]:
    """``room`` of ``rows`` in their order: the running ones first, the newest first."""
    ranked = sorted(range(len(rows)), key=lambda i: (rows[i].finished, -i))
    return [rows[i] for i in sorted(ranked[:room])]


@contextmanager
def chunk_progress(on: Console = console) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar per layer, element or stage, fed by the library's ``progress(what,
    done, total)`` callbacks, kept within the terminal's height (see :class:`_BoundedProgress`)."""
    tasks: dict[str, Any] = {}
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with _BoundedProgress(*columns, console=on, transient=False) as progress:

        def update(layer: str, done: int, total: int) -> None:
            if layer not in tasks:
                tasks[layer] = progress.add_task(layer, total=total)
            progress.update(tasks[layer], completed=done)

        yield update
