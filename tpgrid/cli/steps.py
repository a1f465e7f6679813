"""The commands that run one step of the job by hand: synth, cube, fit, predict, report.

Each parses its options, takes the locks of the directories it writes into, opens a Dask client,
calls the library and prints what it did. The library is imported inside each command, so that
`tpgrid --help` starts without Dask, Zarr or scikit-learn.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich import box
from rich.table import Table

from tpgrid.cli.common import (
    ClusterOption,
    OverwriteOption,
    SchedulerOption,
    WaitOption,
    WorkersOption,
    chunk_progress,
    cluster_spec,
    command_cluster,
    console,
    user_errors,
    workdir_lock,
)

if TYPE_CHECKING:
    from tpgrid.fit import FitReport, SiteSource

SitesCrsOption = Annotated[
    str,
    typer.Option(
        help="CRS of the site table's coordinates (EPSG code); projected tables give them in "
        "columns x and y, geographic ones in lon and lat."
    ),
]


def _site_source(path: Path, crs: str) -> SiteSource:
    from tpgrid.fit import SiteSource
    from tpgrid.yamlfile import validated

    return validated(SiteSource.model_validate, {"path": path, "crs": crs}, "--sites-crs")


@user_errors
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
        soft_wrap=True,
    )


@user_errors
def cube(
    ctx: typer.Context,
    catalog: Annotated[Path, typer.Option(help="Covariate catalog YAML.")],
    grid: Annotated[
        Path,
        typer.Option(help="Grid YAML (crs, resolution, bbox or extent, or like; chunk, mask)."),
    ],
    out: Annotated[Path, typer.Option(help="Zarr cube to build or update.")],
    overwrite: OverwriteOption = False,
    cluster: ClusterOption = None,
    scheduler_address: SchedulerOption = None,
    workers: WorkersOption = None,
    wait: WaitOption = False,
) -> None:
    """Build the covariate cube, or update it: only layers whose source changed are rewritten."""
    workdir_lock(ctx, [out.resolve().parent], wait)
    from tpgrid.cube import build_cube
    from tpgrid.grid import TargetGrid, load_grid_spec
    from tpgrid.preflight import check_catalog
    from tpgrid.sources import load_catalog

    spec = cluster_spec(cluster)
    layers = load_catalog(catalog)
    target = TargetGrid.from_spec(load_grid_spec(grid))
    check_catalog(layers, target)  # every bad source, before a cluster is started
    started = time.perf_counter()
    with command_cluster(scheduler_address, workers, spec), chunk_progress() as progress:
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
        f"Cube ready in {time.perf_counter() - started:.1f} s: {report.path}",
        highlight=False,
        soft_wrap=True,
    )


@user_errors
def fit(
    ctx: typer.Context,
    sites: Annotated[Path, typer.Option(help="Site table (CSV or Parquet), one row per sample.")],
    cube: Annotated[Path, typer.Option(help="Covariate cube built by `tpgrid cube`.")],
    out: Annotated[Path, typer.Option(help="Directory for the models, one folder per element.")],
    sites_crs: SitesCrsOption = "EPSG:4326",
    settings: Annotated[
        Path | None, typer.Option(help="Fit settings YAML; the options below override it.")
    ] = None,
    element: Annotated[
        list[str] | None,
        typer.Option(
            "--element",
            "-e",
            help="Element to fit (repeat it); default: every element column of the site table.",
        ),
    ] = None,
    trees: Annotated[int | None, typer.Option(help="Trees of each final forest [500].")] = None,
    search_trees: Annotated[
        int | None,
        typer.Option(help="Trees of each CV forest (the search's out-of-bag mean too) [100]."),
    ] = None,
    folds: Annotated[int | None, typer.Option(help="CV folds [10].")] = None,
    block_km: Annotated[
        float | None,
        typer.Option(
            help="Edge of the spatial CV blocks, km; default: the edge whose CV distances match "
            "the prediction area's distances to the sites (kNNDM)."
        ),
    ] = None,
    screen_sd: Annotated[
        float | None, typer.Option(help="Remove values beyond mean ± this many SD [3]; 0: off.")
    ] = None,
    calibrate: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated elements calibrated XRF → ICP-MS; '': none; default: every "
            "element with values in its <element>_icpms column."
        ),
    ] = None,
    train_on: Annotated[
        str | None, typer.Option(help="'samples' (default) or 'site_means'.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed [0].")] = None,
    overwrite: OverwriteOption = False,
    cluster: ClusterOption = None,
    scheduler_address: SchedulerOption = None,
    workers: WorkersOption = None,
    wait: WaitOption = False,
) -> None:
    """Fit one random forest per element: site-bootstrap out-of-bag grid search and CVs on Dask,
    central final fit."""
    workdir_lock(ctx, [out.resolve().parent], wait)
    from tpgrid.fit import fit_models, fit_settings

    spec = cluster_spec(cluster)

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
    with command_cluster(scheduler_address, workers, spec), chunk_progress() as progress:
        report = fit_models(
            _site_source(sites, sites_crs),
            cube,
            out,
            chosen,
            overwrite=overwrite,
            progress=progress,
        )
    console.print(
        _fit_table(report, f"models in {out} (CV forests of {chosen.search_trees} trees)")
    )
    for skipped in report.skipped:
        console.print(f"[yellow]{skipped.element} skipped:[/] {skipped.reason}", highlight=False)
    for warning in report.warnings:
        console.print(warning, style="yellow", markup=False, highlight=False)
    for reason, ids in report.excluded_sites.items():
        console.print(
            f"[yellow]{len(ids)} site(s) not used ({reason.replace('_', ' ')}):[/] "
            + ", ".join(ids),
            highlight=False,
        )
    console.print(
        f"Fitted in {time.perf_counter() - started:.1f} s: {out}", highlight=False, soft_wrap=True
    )


def _fit_table(report: FitReport, title: str) -> Table:
    """Per element: sites, fit and OOB R², then one line per CV scheme with its metrics; an
    element whose grouped-CV R² is below 0 is marked (its warning follows the table)."""
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
            f"{fitted.element} (poor)" if fitted.element in report.poor else fitted.element,
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


@user_errors
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
    quantile: Annotated[
        list[float] | None,
        typer.Option(
            help="Quantile of the quantile regression forest to map (repeat it; 0 for none) "
            "[0.05, 0.5, 0.95]."
        ),
    ] = None,
    interval: Annotated[
        bool, typer.Option(help="Map the calibrated prediction interval's bounds.")
    ] = True,
    relative_width: Annotated[
        bool, typer.Option(help="Map (Q95 - Q05) / Q50 (needs those quantiles).")
    ] = False,
    standard_error: Annotated[
        bool,
        typer.Option(help="Map the jackknife standard error of the mean (slower than the rest)."),
    ] = False,
    applicability: Annotated[
        bool, typer.Option(help="Map the dissimilarity index and the area of applicability.")
    ] = True,
    overwrite: OverwriteOption = False,
    cluster: ClusterOption = None,
    scheduler_address: SchedulerOption = None,
    workers: WorkersOption = None,
    wait: WaitOption = False,
) -> None:
    """Predict mean, variance and sd maps of every element over the cube, with its quantile,
    interval, standard-error and applicability maps as asked."""
    workdir_lock(
        ctx, [out.resolve().parent, *([publish.resolve().parent] if publish else [])], wait
    )
    from tpgrid.core.blocks import PredictOptions
    from tpgrid.outputs import publish as publish_run
    from tpgrid.predict import check_uncertainty_parts, load_models, predict_cube

    spec = cluster_spec(cluster)
    try:
        options = PredictOptions(
            unseen=unseen,
            quantiles=(0.05, 0.5, 0.95) if quantile is None else tuple(q for q in quantile if q),
            interval=interval,
            relative_width=relative_width,
            standard_error=standard_error,
            applicability=applicability,
        )
    except ValueError as exc:
        from tpgrid.errors import ConfigError

        raise ConfigError(f"--quantile / --relative-width: {exc}") from exc
    artifacts = load_models(models)
    check_uncertainty_parts(artifacts, options)
    with command_cluster(scheduler_address, workers, spec), chunk_progress() as progress:
        report = predict_cube(
            cube,
            artifacts,
            out,
            options=options,
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
    console.print(f"Maps {state}: {report.path}", highlight=False, soft_wrap=True)
    if published:
        console.print(
            f"Published to {published.directory}: {len(published.cogs)} COGs, "
            f"{len(published.quicklooks)} quicklooks, STAC item {published.stac_item}",
            highlight=False,
            soft_wrap=True,
        )


@user_errors
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
    sites_crs: SitesCrsOption = "EPSG:4326",
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
    applicability: Annotated[
        bool,
        typer.Option(help="Compute the dissimilarity index and area of applicability maps."),
    ] = True,
    overwrite: OverwriteOption = False,
    cluster: ClusterOption = None,
    scheduler_address: SchedulerOption = None,
    workers: WorkersOption = None,
    wait: WaitOption = False,
) -> None:
    """Write the science report: statistics, drivers, model checks, applicability, coverage."""
    workdir_lock(ctx, [out.resolve().parent], wait)
    from tpgrid.core.uncertainty import TREE_QUANTILES
    from tpgrid.report import ReportSettings, find_elements, write_report
    from tpgrid.yamlfile import validated

    spec = cluster_spec(cluster)
    find_elements(models)  # a wrong directory fails before a cluster is started

    chosen: dict[str, Any] = {"effects": tuple(effect)} if effect else {}
    given = {"level": level, "applicability": applicability, **chosen}
    settings = validated(ReportSettings.model_validate, given, "report options")
    started = time.perf_counter()
    with command_cluster(scheduler_address, workers, spec), chunk_progress() as progress:
        result = write_report(
            models,
            out,
            cube=cube,
            sites=None if sites is None else _site_source(sites, sites_crs),
            prediction=prediction,
            settings=settings,
            overwrite=overwrite,
            progress=progress,
        )
    table = Table(
        title=f"held-out sites inside the {settings.level:.0%} intervals; report {result.html}",
        box=box.SIMPLE_HEAD,
    )
    columns = ("element", TREE_QUANTILES, "published, grouped CV", "spatial CV", "inside AOA")
    for column in columns:
        table.add_column(column, justify="left" if column == "element" else "right")
    for element, summary in result.summary["elements"].items():
        achieved = {row["method"]: row["achieved"] for row in summary["coverage"]}
        coverage = (summary.get("intervals") or {}).get("coverage", {})
        published = [
            f"{coverage[scheme]['overall']['coverage']:.0%}" if scheme in coverage else "–"
            for scheme in ("grouped", "spatial")
        ]
        share = summary["applicability"]["share_inside"]
        table.add_row(
            element,
            f"{achieved[TREE_QUANTILES]:.0%}",
            *published,
            "–" if share is None else f"{share:.0%}",
        )
    console.print(table)
    console.print(
        f"Report written in {time.perf_counter() - started:.1f} s: {result.html} "
        f"({len(result.figures)} figures in {result.directory / 'figures'})",
        highlight=False,
        soft_wrap=True,
    )
