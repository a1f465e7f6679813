"""Before and after a build: open and check the sources, say what a build would do, verify a cube.

:func:`open_sources` fails on a missing file, a raster without CRS or one off the grid in
seconds, before a cluster is started or anything is written; :func:`plan_cube` tells a run
which layers a build would recompute, from fingerprints and chunk file records alone; and
:func:`verify_cube` checks every chunk file against its record. None of them reads a pixel.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from tpgrid.cube.read import ATTR_FINGERPRINTS, ATTR_GRID
from tpgrid.grid import TargetGrid
from tpgrid.integrity import Damage
from tpgrid.sources import Catalog, check_overlap, fingerprint, open_layer
from tpgrid.store import ATTR_COMPLETE, check_variable, read_attrs, records_from_json, verify_group
from tpgrid.terrain import TERRAIN_LAYERS


def open_sources(catalog: Catalog, grid: TargetGrid) -> dict[str, xr.DataArray]:
    """Open every catalog layer lazily and check that it covers the grid, reading no pixels:
    a missing file, a raster without CRS or one off the grid fails here, in seconds."""
    sources = {}
    for name in catalog.layers:
        sources[name] = open_layer(catalog, name)
        check_overlap(name, sources[name], grid)
    return sources


def verify_cube(path: str | Path) -> list[Damage]:
    """Every chunk file of every variable of the cube at ``path`` checked against its record
    (missing, changed, or a file where none was written), and a cube not marked complete.
    Reads the records and the files only: nothing is decoded, no Dask."""
    return verify_group(Path(path), "cube")


def expected_fingerprints(catalog: Catalog) -> dict[str, str]:
    """The fingerprint every variable built from ``catalog`` gets (``valid`` aside), without
    opening a raster: the catalog layers' own, and the terrain layers' from their DEM."""
    prints = {name: fingerprint(catalog, name) for name in catalog.layers}
    if catalog.terrain is not None:
        derived = terrain_fingerprint(prints[catalog.terrain.dem])
        prints |= dict.fromkeys(TERRAIN_LAYERS, derived)
    return prints


def terrain_fingerprint(dem_fingerprint: str) -> str:
    """A derived terrain layer changes exactly when its DEM does."""
    return "terrain:" + dem_fingerprint


def plan_cube(catalog: Catalog, grid: TargetGrid, path: str | Path) -> dict[str, str]:
    """What :func:`build_cube` would do to each catalog layer, without reading any raster:
    ``new`` (no cube, or a cube of another grid), ``changed`` (the source's fingerprint
    differs: its chunks are recomputed and rewritten where their content changed),
    ``damaged`` (unchanged source, but chunk files that do not match their records, or no
    records to check them against: those chunks are recomputed) or ``unchanged``. Derived
    terrain layers follow their DEM; they and ``valid`` are listed, as ``damaged``, only when
    their own chunk files are."""
    attrs = read_attrs(Path(path)) or {}
    same_grid = attrs.get(ATTR_COMPLETE) and attrs.get(ATTR_GRID) == grid.spec.model_dump(
        mode="json"
    )
    old_prints: dict[str, str] = attrs.get(ATTR_FINGERPRINTS, {}) if same_grid else {}
    records = (records_from_json(attrs) or {}) if same_grid else {}
    plan = {}
    for name in catalog.layers:
        if name not in old_prints:
            plan[name] = "new"
        elif fingerprint(catalog, name) != old_prints[name]:
            plan[name] = "changed"
        elif name not in records or check_variable(Path(path), name, records[name]):
            plan[name] = "damaged"
        else:
            plan[name] = "unchanged"
    # A run repairs them anyway when a layer changes; the check matters when nothing does.
    derived = [name for name in records if name not in catalog.layers]
    for name in derived if all(what == "unchanged" for what in plan.values()) else ():
        if check_variable(Path(path), name, records[name]):
            plan[name] = "damaged"
    return plan
