"""``tpgrid init``: the catalog, grid and pipeline of a user's own rasters and site table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from tpgrid.cli.common import OverwriteOption, console, user_errors


@user_errors
def init(
    rasters: Annotated[
        Path,
        typer.Argument(
            metavar="RASTERS", help="Folder of the covariate GeoTIFFs (searched recursively)."
        ),
    ],
    sites: Annotated[Path, typer.Option(help="Site table (CSV or Parquet): one row per sample.")],
    out: Annotated[
        Path, typer.Option(help="Folder to write catalog.yaml, grid.yaml and pipeline.yaml into.")
    ] = Path("."),
    name: Annotated[
        str | None, typer.Option(help="Pipeline name [the --out folder's name].")
    ] = None,
    sites_crs: Annotated[
        str | None,
        typer.Option(help="CRS of the sites' x/y columns [the grid's]; lon/lat are EPSG:4326."),
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Write a runnable pipeline for a folder of rasters and a site table, guessing each
    layer's kind (small integer rasters: categorical) and taking the grid from the finest
    raster. The YAML comments say what to check."""
    from tpgrid.scaffold import scaffold_pipeline

    made = scaffold_pipeline(
        rasters, sites, out, name=name, sites_crs=sites_crs, overwrite=overwrite
    )
    table = Table(title=f"layers in {made.catalog}", box=box.SIMPLE_HEAD)
    for column in ("layer", "file", "kind", "pixel", "CRS"):
        table.add_column(column, overflow="fold")
    for layer in made.layers:
        kind = layer.kind + (f" ({len(layer.classes)} classes)" if layer.classes else "")
        grid = " (grid)" if layer == made.template else ""
        pixel = f"{layer.resolution[0]:g} x {layer.resolution[1]:g}{grid}"
        table.add_row(layer.name, layer.path.name, kind, pixel, layer.crs[:40])
    console.print(table)
    x, y = made.site_columns
    console.print(
        f"sites: columns {x}/{y} in {made.site_crs}; elements {', '.join(made.elements)}",
        highlight=False,
        soft_wrap=True,
    )
    for check in made.checks:
        console.print(f"[yellow]check:[/] {check}", highlight=False, soft_wrap=True)
    console.print(
        f"Wrote {made.catalog.name}, {made.grid.name} and {made.pipeline.name} in "
        f"{made.pipeline.parent}. Next: tpgrid run {made.pipeline} --dry-run",
        highlight=False,
        soft_wrap=True,
    )
