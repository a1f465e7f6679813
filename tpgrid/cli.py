"""The ``tpgrid`` command. Thin: parse options, open a Dask client, call the library, report.

A :class:`~tpgrid.errors.TpgridError` is printed as one message, without a traceback, and the
command exits with its ``exit_code``.
"""

from __future__ import annotations

import _thread
import functools
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, ParamSpec, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tpgrid.errors import StorageError, TpgridError

if TYPE_CHECKING:
    from tpgrid.client import ClusterSpec
    from tpgrid.config import PipelineConfig
    from tpgrid.model import FitReport
    from tpgrid.runs import Step

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
    console.print(f"[bold red]error:[/] {error}", highlight=False, markup=True)
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


def _user_errors(command: Callable[P, R]) -> Callable[P, R]:
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


def _workdir_lock(ctx: typer.Context, directories: list[Path], wait: bool) -> None:
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
def _cluster(
    address: str | None, workers: int | None, spec: ClusterSpec | None = None
) -> Iterator[None]:
    """A Dask client for the command: ``address`` wins, then ``spec``, then a LocalCluster."""
    from tpgrid.client import LocalSpec, dask_client

    chosen = spec if spec is not None and workers is None else LocalSpec(workers=workers)
    with dask_client(chosen, address=address) as client:
        console.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)
        yield


@contextmanager
def _chunk_progress() -> Iterator[Callable[[str, int, int], None]]:
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


@app.command()
@_user_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Directory to write the synthetic plateau into.")],
    size: Annotated[
        str, typer.Option(help="'small' (tests) or 'full' (whole plateau, 1 km).")
    ] = "small",
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same files.")] = 0,
    overwrite: OverwriteOption = False,
) -> None:
    """Write a synthetic plateau: covariate GeoTIFFs, catalog, grid, sites and truth rasters."""
    from tpgrid.synthetic import write_plateau

    started = time.perf_counter()
    files = write_plateau(out, size=size, seed=seed, overwrite=overwrite)
    console.print(
        f"Synthetic plateau ({size}, seed {seed}) written to {files.root} "
        f"in {time.perf_counter() - started:.1f} s\n  catalog: {files.catalog}\n"
        f"  grid:    {files.grid}\n  sites:   {files.sites}",
        highlight=False,
    )


@app.command()
@_user_errors
def cube(
    ctx: typer.Context,
    catalog: Annotated[Path, typer.Option(help="Covariate catalog YAML.")],
    grid: Annotated[Path, typer.Option(help="Grid YAML (CRS, resolution, bbox, chunk, mask).")],
    out: Annotated[Path, typer.Option(help="Zarr cube to build or update.")],
    overwrite: OverwriteOption = False,
    scheduler_address: SchedulerOption = None,
    workers: WorkersOption = None,
    wait: WaitOption = False,
) -> None:
    """Build the covariate cube, or update it: only layers whose source changed are rewritten."""
    _workdir_lock(ctx, [out.resolve().parent], wait)
    from tpgrid.cube import build_cube, open_sources
    from tpgrid.grid import TargetGrid, load_grid_spec
    from tpgrid.sources import load_catalog

    layers = load_catalog(catalog)
    target = TargetGrid.from_spec(load_grid_spec(grid))
    open_sources(layers, target)  # bad sources fail before a cluster is started
    started = time.perf_counter()
    with _cluster(scheduler_address, workers), _chunk_progress() as progress:
        report = build_cube(layers, target, out, overwrite=overwrite, progress=progress)
    table = Table(title=f"cube {report.path} ({report.shape[0]} × {report.shape[1]} px)")
    for column in ("variable", "action", "chunks written"):
        table.add_column(column)
    for update in report.layers:
        table.add_row(
            update.name, update.action, f"{update.chunks_written} / {update.chunks_total}"
        )
    console.print(table)
    console.print(
        f"Cube ready in {time.perf_counter() - started:.1f} s: {report.path}", highlight=False
    )


@app.command()
@_user_errors
def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Working directory of the demo.")] = Path("tpgrid-demo"),
    full: Annotated[
        bool, typer.Option("--full", help="The paper-scale run: whole plateau, 500 trees.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic plateau.")] = 0,
    cluster: ClusterOption = None,
    scheduler_address: SchedulerOption = None,
    workers: WorkersOption = None,
    wait: WaitOption = False,
) -> None:
    """Run the whole job on a built-in synthetic plateau: plateau, cube, fit, predict, publish.

    The same as `tpgrid run pipelines/demo.yaml` (or synthetic_1km.yaml with --full). Running it
    again recomputes only what changed: nothing, unless its files were edited.
    """
    from tpgrid.config import demo_config

    config = demo_config(out.resolve(), full=full, seed=seed)
    _workdir_lock(ctx, [config.workdir], wait)
    _run_and_show(config, cluster, scheduler_address, workers)


@app.command()
@_user_errors
def run(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Pipeline config YAML (see pipelines/).")],
    cluster: ClusterOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be recomputed and why; run nothing.")
    ] = False,
    if_changed: Annotated[
        bool,
        typer.Option(
            "--if-changed",
            help=f"Run only if an input changed; else exit {EXIT_UNCHANGED} without running.",
        ),
    ] = False,
    scheduler_address: SchedulerOption = None,
    workers: WorkersOption = None,
    wait: WaitOption = False,
) -> None:
    """Run a pipeline: cube → fit → predict → publish, recomputing only what changed.

    Exit codes: 0 done; 2 bad input or config (the message says what to fix); 1 unexpected
    failure; with --if-changed, 3 when no input changed and nothing was run.
    """
    from tpgrid.config import load_pipeline
    from tpgrid.runs import plan, plan_changes

    pipeline = load_pipeline(config)
    if not dry_run:  # a dry run only reads; --if-changed plans under the lock, then runs
        _workdir_lock(ctx, [pipeline.workdir], wait)
    if dry_run or if_changed:
        steps = plan(pipeline)
        if dry_run:
            console.print(_steps_table(f"plan of {pipeline.name}", steps, timed=False))
            return
        if not plan_changes(steps):
            console.print(f"{pipeline.name}: no input changed; nothing to do.", highlight=False)
            raise typer.Exit(code=EXIT_UNCHANGED)
    _run_and_show(pipeline, cluster, scheduler_address, workers)


@app.command()
@_user_errors
def verify(
    ctx: typer.Context,
    target: Annotated[
        Path, typer.Argument(help="A pipeline's working directory, or its pipeline YAML.")
    ],
    wait: WaitOption = False,
) -> None:
    """Check the cube, models, prediction and every published version of a working directory
    against the sizes and checksums recorded when they were written.

    Exit codes: 0 everything intact; 4 something damaged (each file is named); 2 bad input.
    """
    from tpgrid.config import load_pipeline
    from tpgrid.verify import verify_workdir

    workdir = load_pipeline(target).workdir if target.is_file() else target.resolve()
    # A run swapping a store in would look like damage: check between runs, not during one.
    _workdir_lock(ctx, [workdir], wait)
    checked = verify_workdir(workdir)
    table = Table(title=f"verify {workdir}", box=box.SIMPLE_HEAD)
    for column in ("what", "path", "result"):
        table.add_column(column)
    for item in checked:
        result = "intact" if item.intact else f"[bold red]{len(item.damage)} damaged[/]"
        table.add_row(item.what, str(item.path), result)
    console.print(table)
    damage = [d for item in checked for d in item.damage]
    for found in damage:
        # soft_wrap: a path broken across lines could not be copied or grepped.
        console.print(f"[red]damaged:[/] {found}", highlight=False, soft_wrap=True)
    if damage:
        console.print(
            f"{len(damage)} file(s) do not match their records. `tpgrid run` on the pipeline "
            "recomputes them; a published version is published again if it is current.",
            highlight=False,
        )
        raise typer.Exit(code=EXIT_DAMAGED)
    console.print(f"All {len(checked)} checked: intact.", highlight=False)


@app.command()
@_user_errors
def runs(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Pipeline config YAML.")],
    prune: Annotated[
        int | None,
        typer.Option(help="Remove published versions but the newest N (never the current)."),
    ] = None,
    wait: WaitOption = False,
) -> None:
    """List a pipeline's runs (what changed, what was recomputed, timings); prune versions."""
    from tpgrid.config import load_pipeline
    from tpgrid.publication import prune as prune_versions
    from tpgrid.runs import list_runs

    pipeline = load_pipeline(config)
    if prune is not None:  # listing only reads
        _workdir_lock(ctx, [pipeline.workdir], wait)
    table = Table(title=f"runs of {pipeline.name} ({pipeline.runs_dir})", box=box.SIMPLE_HEAD)
    for column in ("run", "status", "changed", "recomputed", "seconds", "published"):
        table.add_column(column)
    for record in list_runs(pipeline):
        recomputed = "; ".join(
            f"{s['name']}: {s['detail']}" for s in record["steps"] if s["action"] != "unchanged"
        )
        seconds = sum(s["seconds"] for s in record["steps"])
        table.add_row(
            record["id"],
            record["status"],
            "yes" if record["changed"] else "no",
            recomputed or "nothing",
            f"{seconds:.1f}",
            record["published"] or "",
        )
    console.print(table)
    if prune is not None:
        for removed in prune_versions(pipeline.published_dir, prune):
            console.print(f"removed {removed}", highlight=False)


def _run_and_show(
    config: PipelineConfig, cluster: Path | None, address: str | None, workers: int | None
) -> None:
    from tpgrid.client import load_cluster_spec
    from tpgrid.publication import current_version
    from tpgrid.runs import run_pipeline

    spec = load_cluster_spec(cluster) if cluster else config.cluster
    started = time.perf_counter()
    with _cluster(address, workers, spec), _chunk_progress() as progress:
        record = run_pipeline(config, progress=progress)
    console.print(_steps_table(f"run {record.id} of {config.name}", list(record.steps)))
    for step in record.steps:
        for repair in step.repairs:
            console.print(f"{step.name}: repaired {repair}", style="yellow", markup=False)
    current = current_version(config.published_dir)
    console.print(
        f"Done in {time.perf_counter() - started:.1f} s. Maps (COG), quicklooks (PNG), STAC item "
        f"and report: {current}",
        highlight=False,
    )


def _steps_table(title: str, steps: list[Step], *, timed: bool = True) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in ("step", "action", "why / what", *(["seconds"] if timed else [])):
        table.add_column(column)
    for step in steps:
        table.add_row(
            step.name, step.action, step.detail, *([f"{step.seconds:.1f}"] if timed else [])
        )
    return table


@app.command()
@_user_errors
def fit(
    ctx: typer.Context,
    sites: Annotated[Path, typer.Option(help="Site table (CSV or Parquet), one row per sample.")],
    cube: Annotated[Path, typer.Option(help="Covariate cube built by `tpgrid cube`.")],
    out: Annotated[Path, typer.Option(help="Directory for the models, one folder per element.")],
    settings: Annotated[
        Path | None, typer.Option(help="Fit settings YAML; the options below override it.")
    ] = None,
    element: Annotated[
        list[str] | None,
        typer.Option("--element", "-e", help="Element to fit (repeat it); default: all seven."),
    ] = None,
    trees: Annotated[int | None, typer.Option(help="Trees of each final forest [500].")] = None,
    search_trees: Annotated[
        int | None, typer.Option(help="Trees of each CV forest in search and assessment [100].")
    ] = None,
    folds: Annotated[int | None, typer.Option(help="CV folds [10].")] = None,
    block_km: Annotated[
        float | None, typer.Option(help="Edge of the spatial CV blocks, km [100].")
    ] = None,
    screen_sd: Annotated[
        float | None, typer.Option(help="Remove values beyond mean ± this many SD [3]; 0: off.")
    ] = None,
    calibrate: Annotated[
        str | None,
        typer.Option(help="Comma-separated elements calibrated XRF → ICP-MS [Zn,Ni]; '': none."),
    ] = None,
    train_on: Annotated[
        str | None, typer.Option(help="'samples' (default) or 'site_means'.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed [0].")] = None,
    overwrite: OverwriteOption = False,
    scheduler_address: SchedulerOption = None,
    workers: WorkersOption = None,
    wait: WaitOption = False,
) -> None:
    """Fit one random forest per element: grouped-CV grid search on Dask, central final fit."""
    _workdir_lock(ctx, [out.resolve().parent], wait)
    from tpgrid.model import fit_models, fit_settings

    given: dict[str, Any] = {
        "elements": tuple(element) if element else None,
        "n_trees": trees,
        "search_trees": search_trees,
        "cv_folds": folds,
        "spatial_block_km": block_km,
        "screening_sd": screen_sd,
        "calibrate": None if calibrate is None else tuple(filter(None, calibrate.split(","))),
        "train_on": train_on,
        "seed": seed,
    }
    overrides = {key: value for key, value in given.items() if value is not None}
    if screen_sd == 0:
        overrides["screening_sd"] = None  # 0 SD would remove everything: it means "off"
    chosen = fit_settings(settings, overrides)
    started = time.perf_counter()
    with _cluster(scheduler_address, workers), _chunk_progress() as progress:
        report = fit_models(sites, cube, out, chosen, overwrite=overwrite, progress=progress)
    console.print(
        _fit_table(report, f"models in {out} (CV forests of {chosen.search_trees} trees)")
    )
    for skipped in report.skipped:
        console.print(f"[yellow]{skipped.element} skipped:[/] {skipped.reason}", highlight=False)
    for reason, ids in report.excluded_sites.items():
        console.print(
            f"[yellow]{len(ids)} site(s) not used ({reason.replace('_', ' ')}):[/] "
            + ", ".join(ids),
            highlight=False,
        )
    console.print(f"Fitted in {time.perf_counter() - started:.1f} s: {out}", highlight=False)


def _fit_table(report: FitReport, title: str) -> Table:
    """Per element: sites, fit and OOB R², then one line per CV scheme with its metrics."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in (
        "element",
        "sites",
        "fit R²",
        "OOB R²",
        "CV",
        "R²",
        "RMSE",
        "MAE",
        "bias",
        "CCC",
    ):
        table.add_column(column, justify="left" if column in ("element", "CV") else "right")
    for fitted in report.fitted:
        record = fitted.record
        head = [
            fitted.element,
            str(record["training"]["n_sites"]),
            f"{record['fit']['r2']:.2f}",
            f"{record['fit']['oob_r2']:.2f}",
        ]
        for i, scheme in enumerate(("grouped", "random", "spatial")):
            cv = record["cv"][scheme]
            scores = ["skipped", "", "", "", ""]
            if "r2" in cv:
                errors = (_mg_per_kg(cv[key]) for key in ("rmse", "mae", "bias"))
                scores = [f"{cv['r2']:.2f}", *errors, f"{cv['ccc']:.2f}"]
            table.add_row(*(head if i == 0 else [""] * 4), scheme, *scores, end_section=i == 2)
    return table


def _mg_per_kg(value: float) -> str:
    """Three significant digits, without exponents for the thousands of mg/kg of Fe."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


@app.command()
@_user_errors
def predict(
    ctx: typer.Context,
    cube: Annotated[Path, typer.Option(help="Covariate cube built by `tpgrid cube`.")],
    models: Annotated[
        Path, typer.Option(help="A model directory, or a directory of them (one per element).")
    ],
    out: Annotated[Path, typer.Option(help="Zarr group to write the maps into.")],
    publish: Annotated[
        Path | None,
        typer.Option(help="Also write COGs, quicklook PNGs and a STAC item into this directory."),
    ] = None,
    unseen: Annotated[
        Literal["nan", "predict"],
        typer.Option(
            help="Pixels whose categorical class the model never saw: 'nan' (no prediction) "
            "or 'predict' (predict with every class indicator off)."
        ),
    ] = "nan",
    overwrite: OverwriteOption = False,
    scheduler_address: SchedulerOption = None,
    workers: WorkersOption = None,
    wait: WaitOption = False,
) -> None:
    """Predict mean, variance and sd maps of every element over the cube."""
    _workdir_lock(
        ctx, [out.resolve().parent, *([publish.resolve().parent] if publish else [])], wait
    )
    from tpgrid.outputs import publish as publish_run
    from tpgrid.predict import load_models, predict_cube

    artifacts = load_models(models)
    with _cluster(scheduler_address, workers), _chunk_progress() as progress:
        report = predict_cube(
            cube,
            artifacts,
            out,
            unseen=unseen,
            overwrite=overwrite,
            progress=progress,
        )
        published = publish_run(out, publish, overwrite=overwrite) if publish else None
    table = Table(title=f"prediction {report.path}", box=box.SIMPLE_HEAD)
    for column in ("element", "trees", "pixels predicted", "unseen class"):
        table.add_column(column, justify="left" if column == "element" else "right")
    for summary in report.elements:
        table.add_row(
            summary.element,
            str(summary.n_trees),
            f"{summary.pixels_predicted:,}",
            f"{summary.pixels_unseen:,}",
        )
    console.print(table)
    state = "already up to date" if report.up_to_date else f"written in {report.seconds:.1f} s"
    console.print(f"Maps {state}: {report.path}", highlight=False)
    if published:
        console.print(
            f"Published to {published.directory}: {len(published.cogs)} COGs, "
            f"{len(published.quicklooks)} quicklooks, STAC item {published.stac_item}",
            highlight=False,
        )


@app.command()
@_user_errors
def report(
    ctx: typer.Context,
    models: Annotated[
        Path, typer.Option(help="Directory of the fitted models (`tpgrid fit --out`).")
    ],
    out: Annotated[Path, typer.Option(help="Directory to write the report into.")],
    cube: Annotated[
        Path | None,
        typer.Option(help="Cube the models were fitted on (default: as recorded by the fit)."),
    ] = None,
    sites: Annotated[
        Path | None, typer.Option(help="Site table (default: as recorded by the fit).")
    ] = None,
    prediction: Annotated[
        Path | None,
        typer.Option(help="Output of `tpgrid predict` with these models, to map with the report."),
    ] = None,
    effect: Annotated[
        list[str] | None,
        typer.Option(
            "--effect",
            help="Predictor for PDP and ALE (repeat it); default: cia, clay, slope, ai, map.",
        ),
    ] = None,
    level: Annotated[float, typer.Option(help="Nominal level of the intervals.")] = 0.9,
    cv_trees: Annotated[
        int | None,
        typer.Option(
            help="Trees of each refitted CV forest (default: as many as the final forest)."
        ),
    ] = None,
    applicability: Annotated[
        bool,
        typer.Option(help="Compute the dissimilarity index and area of applicability maps."),
    ] = True,
    overwrite: OverwriteOption = False,
    scheduler_address: SchedulerOption = None,
    workers: WorkersOption = None,
    wait: WaitOption = False,
) -> None:
    """Write the science report: statistics, drivers, model checks, applicability, coverage."""
    _workdir_lock(ctx, [out.resolve().parent], wait)
    from tpgrid.core.uncertainty import CALIBRATED_SD, TREE_QUANTILES
    from tpgrid.report import ReportSettings, find_elements, write_report

    find_elements(models)  # a wrong directory fails before a cluster is started

    chosen: dict[str, Any] = {"effects": tuple(effect)} if effect else {}
    settings = ReportSettings(level=level, cv_trees=cv_trees, applicability=applicability, **chosen)
    started = time.perf_counter()
    with _cluster(scheduler_address, workers), _chunk_progress() as progress:
        result = write_report(
            models,
            out,
            cube=cube,
            sites=sites,
            prediction=prediction,
            settings=settings,
            overwrite=overwrite,
            progress=progress,
        )
    table = Table(title=f"report {result.html}", box=box.SIMPLE_HEAD)
    for column in ("element", TREE_QUANTILES, CALIBRATED_SD, "k", "inside AOA"):
        table.add_column(column, justify="left" if column == "element" else "right")
    for element, summary in result.summary["elements"].items():
        achieved = {row["method"]: row["achieved"] for row in summary["coverage"]}
        share = summary["applicability"]["share_inside"]
        table.add_row(
            element,
            f"{achieved[TREE_QUANTILES]:.0%}",
            f"{achieved[CALIBRATED_SD]:.0%}",
            f"{summary['interval_k']:.2f}",
            "–" if share is None else f"{share:.0%}",
        )
    console.print(table)
    console.print(
        f"Report written in {time.perf_counter() - started:.1f} s: {result.html} "
        f"({len(result.figures)} figures in {result.directory / 'figures'})",
        highlight=False,
    )


@app.command()
@_user_errors
def bench(
    out: Annotated[
        Path, typer.Option(help="Directory for bench.json, bench.md, bench.png.")
    ] = Path("tpgrid-bench"),
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Plateau, cubes and models, kept for later runs [~/.cache/tpgrid/bench]."
        ),
    ] = None,
    size: Annotated[str, typer.Option(help="Synthetic plateau: 'full' or 'small'.")] = "full",
    seed: Annotated[int, typer.Option(help="Seed of the plateau, the models and the rows.")] = 0,
    forest: Annotated[
        str, typer.Option(help="'plateau' (fitted by tpgrid) or 'reference' (docs/performance.md).")
    ] = "plateau",
    element: Annotated[str, typer.Option(help="Element whose forest the kernel section times.")] = (
        "Fe"
    ),
    rows: Annotated[int, typer.Option(help="Rows of each kind in the kernel section.")] = 100_000,
    threads: Annotated[
        int, typer.Option(help="Threads of every engine in the kernel section.")
    ] = 2,
    repeats: Annotated[int, typer.Option(help="Timed repeats of every engine.")] = 5,
    section: Annotated[
        list[str] | None,
        typer.Option(help="kernel, scaling or end_to_end (repeat it); default: all three."),
    ] = None,
    chunk: Annotated[
        list[int] | None,
        typer.Option(help="Cube chunk edges of the scaling runs, px (repeat it) [256 … 2048]."),
    ] = None,
    workers: Annotated[
        list[int] | None, typer.Option(help="Worker counts of the scaling runs (repeat it) [1, 2].")
    ] = None,
) -> None:
    """Benchmark prediction throughput against scikit-learn, ONNX Runtime and treelite."""
    from tpgrid.bench import SECTIONS, BenchSettings, run_benchmark, targets, write_report

    settings = BenchSettings(
        workdir=(workdir or Path.home() / ".cache" / "tpgrid" / "bench").resolve(),
        size=size,
        seed=seed,
        forest=forest,
        element=element,
        rows=rows,
        threads=threads,
        repeats=repeats,
        sections=tuple(section) if section else SECTIONS,
        chunks=tuple(chunk) if chunk else None,
        workers=tuple(workers) if workers else (1, 2),
    )
    started = time.perf_counter()
    result = run_benchmark(
        settings, log=lambda message: console.print(f"[dim]{message}[/]", highlight=False)
    )
    files = write_report(result, out)
    table = Table(title="targets", box=box.SIMPLE_HEAD)
    for column in ("target", "rows", "goal", "measured", "met"):
        table.add_column(column)
    for target in targets(result):
        goal = f"{'≥' if target.higher_is_better else '≤'} {target.goal:g}"
        met = "yes" if target.met else "[bold red]no[/]"
        table.add_row(target.name, target.rows, goal, f"{target.measured:.3g}", met)
    console.print(table)
    console.print(
        f"Benchmark done in {time.perf_counter() - started:.0f} s: {files.markdown}, "
        f"{files.json}, {files.plot}",
        highlight=False,
    )
