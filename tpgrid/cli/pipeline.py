"""The commands that run, inspect and check a whole pipeline: demo, run, verify, runs.

A pipeline recomputes only what changed since its last run; these commands plan it, run it, list
its runs and check its stored files against their records. The library is imported inside each
command, so that `tpgrid --help` starts without Dask, Zarr or scikit-learn.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from tpgrid.cli.common import (
    EXIT_DAMAGED,
    EXIT_UNCHANGED,
    ClusterOption,
    SchedulerOption,
    WaitOption,
    WorkersOption,
    chunk_progress,
    command_cluster,
    console,
    user_errors,
    workdir_lock,
)

if TYPE_CHECKING:
    from tpgrid.config import PipelineConfig
    from tpgrid.runs import Step


@user_errors
def demo(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Working directory of the demo (default: tpgrid-demo, with --full "
            "tpgrid-demo-full; with --resolution R, -Rm appended)."
        ),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="The paper-scale run: whole plateau, 500 trees.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic plateau.")] = 0,
    resolution: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="Pixel size of the maps, metres (default: the plateau's 1000); e.g. 250 maps "
            "the same plateau on 16 times as many pixels.",
        ),
    ] = None,
    cluster: ClusterOption = None,
    scheduler_address: SchedulerOption = None,
    workers: WorkersOption = None,
    wait: WaitOption = False,
) -> None:
    """Run the whole job on a built-in synthetic plateau: plateau, cube, fit, predict, publish.

    The same as `tpgrid run pipelines/demo.yaml` (or synthetic_1km.yaml with --full, and
    synthetic_250m.yaml with --full --resolution 250). Running it again recomputes only what
    changed: nothing, unless its files were edited.
    """
    from tpgrid.config import demo_config
    from tpgrid.preflight import check_pipeline

    # Each size and resolution its own workdir: the full demo must not rewrite the small one's
    # plateau, nor a 250 m run replace the 1 km maps.
    default = "tpgrid-demo-full" if full else "tpgrid-demo"
    workdir = out or Path(default if resolution is None else f"{default}-{resolution:g}m")
    config = demo_config(workdir.resolve(), full=full, seed=seed, resolution=resolution)
    workdir_lock(ctx, [config.workdir], wait)
    check_pipeline(
        config,
        workdir_fix="pass --out with a new directory (or the --full, --seed and --resolution "
        "it was made with)",
    )
    _run_and_show(config, cluster, scheduler_address, workers)


@user_errors
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
    from tpgrid.preflight import check_pipeline
    from tpgrid.runs import plan, plan_changes

    pipeline = load_pipeline(config)
    if not dry_run:  # a dry run only reads; --if-changed plans under the lock, then runs
        workdir_lock(ctx, [pipeline.workdir], wait)
    # Every input problem now, in one message, before a cluster starts (a dry run too).
    check_pipeline(pipeline, workdir_fix=f"set 'workdir' in {config} to a new directory")
    if dry_run or if_changed:
        steps = plan(pipeline)
        if dry_run:
            console.print(_steps_table(f"plan of {pipeline.name}", steps, timed=False))
            return
        if not plan_changes(steps):
            console.print(f"{pipeline.name}: no input changed; nothing to do.", highlight=False)
            raise typer.Exit(code=EXIT_UNCHANGED)
    _run_and_show(pipeline, cluster, scheduler_address, workers)


@user_errors
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
    from tpgrid.verify import verify_workdir

    workdir = _workdir_of(target)
    # A run swapping a store in would look like damage: check between runs, not during one.
    workdir_lock(ctx, [workdir], wait)
    checked = verify_workdir(workdir)
    table = Table(title=f"verify {workdir}", box=box.SIMPLE_HEAD)
    table.add_column("what")
    table.add_column(f"path in {workdir.name}", overflow="fold")
    table.add_column("result")
    for item in checked:
        result = "intact" if item.intact else f"[bold red]{len(item.damage)} damaged[/]"
        table.add_row(item.what, str(item.path.relative_to(workdir)), result)
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


@user_errors
def runs(
    ctx: typer.Context,
    target: Annotated[
        Path, typer.Argument(help="A pipeline's working directory, or its pipeline YAML.")
    ],
    prune: Annotated[
        int | None,
        typer.Option(help="Remove published versions but the newest N (never the current)."),
    ] = None,
    wait: WaitOption = False,
) -> None:
    """List a pipeline's runs (what changed, what was recomputed, timings); prune versions."""
    from tpgrid.config import WorkdirLayout
    from tpgrid.publication import prune as prune_versions
    from tpgrid.runs import list_runs

    layout = WorkdirLayout(_workdir_of(target))
    if prune is not None:  # listing only reads
        workdir_lock(ctx, [layout.workdir], wait)
    table = Table(title=f"runs in {layout.runs}", box=box.SIMPLE_HEAD)
    # A run id is what `tpgrid runs` is read for: never cut; long details fold instead.
    table.add_column("run", no_wrap=True, min_width=len("20261202T101010Z-abcd1234"))
    for column in ("status", "changed", "recomputed", "seconds", "published"):
        table.add_column(column, overflow="fold")
    for record in list_runs(layout.workdir):
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
        for removed in prune_versions(layout.published, prune):
            console.print(f"removed {removed}", highlight=False, soft_wrap=True)


def _workdir_of(target: Path) -> Path:
    """The working directory ``target`` names: itself, or the 'workdir' of a pipeline YAML."""
    from tpgrid.config import load_pipeline

    return load_pipeline(target).workdir if target.is_file() else target.resolve()


def _run_and_show(
    config: PipelineConfig, cluster: Path | None, address: str | None, workers: int | None
) -> None:
    from tpgrid.client import load_cluster_spec
    from tpgrid.publication import current_version
    from tpgrid.runs import run_pipeline

    spec = load_cluster_spec(cluster) if cluster else config.cluster
    started = time.perf_counter()
    with command_cluster(address, workers, spec), chunk_progress() as progress:
        record = run_pipeline(config, progress=progress)
    console.print(_steps_table(f"run {record.id} of {config.name}", list(record.steps)))
    for step in record.steps:
        for repair in step.repairs:
            console.print(f"{step.name}: repaired {repair}", style="yellow", markup=False)
    for step in record.steps:
        for warning in step.warnings:
            console.print(f"{step.name}: {warning}", style="yellow", markup=False)
    current = current_version(config.published_dir)
    console.print(
        f"Done in {time.perf_counter() - started:.1f} s. Maps (COG), quicklooks (PNG), STAC item "
        f"and report: {current}",
        highlight=False,
        soft_wrap=True,  # a path broken across lines could not be copied
    )


def _steps_table(title: str, steps: list[Step], *, timed: bool = True) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    # Two-line headers: the step's detail keeps the width of an 80-column terminal.
    measured = ["seconds", "worker\npeak MiB", "tpgrid\npeak MiB"] if timed else []
    for column in ("step", "action", "why / what", *measured):
        table.add_column(column, justify="right" if column in measured else "left")
    for step in steps:
        table.add_row(
            step.name,
            step.action,
            step.detail,
            *(
                [f"{step.seconds:.1f}", _mib(step.peak_worker_mib), _mib(step.peak_process_mib)]
                if timed
                else []
            ),
        )
    return table


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
