"""The ``tpgrid bench`` command: prediction throughput against the engines users would pick instead.

The benchmark itself is :mod:`tpgrid.bench`; this command gathers its settings, runs it, writes
its report and prints the targets with whether each is met.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from tpgrid.cli.common import console, user_errors


@user_errors
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
        str,
        typer.Option(
            help="'plateau' (fitted by tpgrid) or 'reference' (a fixed forest on synthetic rows, "
            "kernel and uncertainty sections only)."
        ),
    ] = "plateau",
    element: Annotated[
        str, typer.Option(help="Element whose forest the kernel and uncertainty sections time.")
    ] = ("Fe"),
    rows: Annotated[
        int, typer.Option(help="Rows of each kind in the kernel and uncertainty sections.")
    ] = 100_000,
    rows_reference: Annotated[
        int,
        typer.Option(
            help="Rows of each kind that quantile-forest and forestci are timed on (uncertainty "
            "section; they are slow): the first of the --rows rows."
        ),
    ] = 2000,
    threads: Annotated[
        int, typer.Option(help="Threads of every engine in the kernel and uncertainty sections.")
    ] = 2,
    repeats: Annotated[int, typer.Option(help="Timed repeats of every engine.")] = 5,
    section: Annotated[
        list[str] | None,
        typer.Option(
            help="kernel, uncertainty, scaling, end_to_end, end_to_end_job or alternatives "
            "(repeat it); default: all but uncertainty, which takes minutes at the default --rows "
            "(5-8 min on 2 cores, plateau forest), and alternatives (tpgrid beside dask-ml's "
            "ParallelPostFit and an xarray.apply_ufunc loop over scikit-learn's trees on the same "
            "cluster; minutes on the full plateau)."
        ),
    ] = None,
    chunk: Annotated[
        list[int] | None,
        typer.Option(help="Cube chunk edges of the scaling runs, px (repeat it) [256 … 2048]."),
    ] = None,
    workers: Annotated[
        list[int] | None, typer.Option(help="Worker counts of the scaling runs (repeat it) [1, 2].")
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="The tpgrid executable of another install (e.g. an older commit in its own "
            "venv), timed beside this one in the end_to_end_job section."
        ),
    ] = None,
    job_case: Annotated[
        list[str] | None,
        typer.Option(
            help="Cases of the end_to_end_job section (repeat it): 'small, first run', 'small, "
            "no-op re-run', 'small, one-window re-run', 'full, first run' (the default: all "
            "four) or 'full 250 m, first run' (tpgrid demo --full --resolution 250; about 30 "
            "minutes on 2 cores)."
        ),
    ] = None,
) -> None:
    """Benchmark prediction throughput against scikit-learn, ONNX Runtime and treelite, the
    quantile and standard-error layers against quantile-forest and forestci, the whole
    `tpgrid demo` job (first run, no-op, one-window change) beside a baseline, and the
    prediction beside what a Dask user would write instead (dask-ml, xarray.apply_ufunc)."""
    from tpgrid.bench import (
        DEFAULT_JOB_CASES,
        DEFAULT_SECTIONS,
        BenchSettings,
        run_benchmark,
        targets,
        write_report,
    )

    settings = BenchSettings(
        workdir=(workdir or Path.home() / ".cache" / "tpgrid" / "bench").resolve(),
        size=size,
        seed=seed,
        forest=forest,
        element=element,
        rows=rows,
        rows_reference=rows_reference,
        threads=threads,
        repeats=repeats,
        sections=tuple(section) if section else DEFAULT_SECTIONS,
        chunks=tuple(chunk) if chunk else None,
        workers=tuple(workers) if workers else (1, 2),
        baseline=baseline.resolve() if baseline else None,
        job_cases=tuple(job_case) if job_case else DEFAULT_JOB_CASES,
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
