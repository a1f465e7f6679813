"""`tpgrid init`: from a folder of rasters and a site table, the catalog, grid and pipeline
YAMLs of a run that works at once, with comments saying what was guessed and what to check.

What is guessed, and how:

- **kind**: an integer raster with at most :data:`MAX_GUESSED_CLASSES` distinct values, all
  valid class codes (0–254), is categorical, its classes named ``class <code>`` (the file
  does not say their names); anything else is continuous.
- **grid**: the finest raster's CRS, resolution and extent, written out explicitly so the
  user can edit them (``like:`` that raster would give the same grid).
- **sites**: ``lon``/``lat`` columns are EPSG:4326; ``x``/``y`` columns are in the grid's CRS
  unless ``sites_crs`` says otherwise.

Everything written is read back through the same loaders a run uses (catalog, grid,
pipeline, site table) before the command returns, so what ``init`` writes is runnable, or it
says why not and leaves nothing behind.
"""

from __future__ import annotations

import json
import keyword
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from odc.geo.geobox import GeoBox
from pyproj import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from tpgrid.config import load_pipeline
from tpgrid.errors import OutputExistsError, SiteTableError, SourceError
from tpgrid.fit.elements import element_columns
from tpgrid.fit.sites import read_sites
from tpgrid.sources import CATEGORICAL_NODATA, load_catalog, pixel_area_m2

#: An integer raster with more distinct values than this is taken for a continuous quantity.
MAX_GUESSED_CLASSES = 30
RASTER_SUFFIXES = (".tif", ".tiff")
#: Chunks a written grid should have at least (a smaller chunk edge is chosen until it does).
MIN_CHUNKS = 8
FILES = ("catalog.yaml", "grid.yaml", "pipeline.yaml")


@dataclass(frozen=True)
class GuessedLayer:
    """One band of one raster, as the catalog will declare it."""

    name: str
    path: Path
    band: int
    kind: str
    dtype: str
    crs: str
    resolution: tuple[float, float]
    geobox: GeoBox
    classes: tuple[int, ...] = ()
    units: str = ""
    description: str = ""

    @property
    def pixel_area_m2(self) -> float:
        """Mean pixel area: rasters in different CRSs compare by their real fineness."""
        return pixel_area_m2(self.geobox)


@dataclass(frozen=True)
class Scaffold:
    """What ``init`` wrote and guessed."""

    catalog: Path
    grid: Path
    pipeline: Path
    layers: tuple[GuessedLayer, ...]
    template: GuessedLayer
    site_crs: str
    site_columns: tuple[str, str]
    elements: tuple[str, ...]
    checks: tuple[str, ...] = field(default=())


def scaffold_pipeline(
    rasters: Path,
    sites: Path,
    out: Path,
    *,
    name: str | None = None,
    sites_crs: str | None = None,
    overwrite: bool = False,
) -> Scaffold:
    """Write ``catalog.yaml``, ``grid.yaml`` and ``pipeline.yaml`` into ``out`` for the
    GeoTIFFs under ``rasters`` and the site table ``sites``; return what was guessed.

    Raises :class:`OutputExistsError` when one of the files exists (unless ``overwrite``),
    :class:`SourceError` for a raster GDAL cannot read or without a CRS, and
    :class:`SiteTableError` for a site table without coordinate columns or elements.
    """
    rasters, sites, out = rasters.resolve(), sites.resolve(), out.resolve()
    targets = [out / f for f in FILES]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{', '.join(existing)} exist: pass --overwrite to replace them, or choose another "
            "--out"
        )
    layers = tuple(_guess_layers(_raster_files(rasters, exclude=out)))
    template = min(layers, key=lambda layer: (layer.pixel_area_m2, str(layer.path)))
    columns = _site_columns(sites)
    site_xy, site_crs, site_check = _site_coordinates(columns, sites, sites_crs, template)
    elements = element_columns(columns)
    if not elements:
        raise SiteTableError(
            f"{sites} has no element column (columns named by an element symbol, e.g. Pb, Cd, "
            f"Zn, in mg/kg; found {list(map(str, columns))}): rename the measured columns"
        )
    pipeline_name = name or _identifier(out.name, fallback="survey").replace("_", "-")
    checks = [site_check] if site_check else []
    texts = {
        "catalog.yaml": _catalog_text(layers, out),
        "grid.yaml": _grid_text(template, out),
        "pipeline.yaml": _pipeline_text(
            pipeline_name, sites, out, site_crs, site_xy, elements, columns
        ),
    }
    out.mkdir(parents=True, exist_ok=True)
    for target in targets:
        target.write_text(texts[target.name])
    try:
        _check_runnable(out / "pipeline.yaml")
    except BaseException:
        for target in targets:
            with suppress(OSError):
                target.unlink()
        raise
    checks += [
        f"layer {layer.name!r} ({_relative(layer.path, out)}) guessed categorical: name its classes"
        for layer in layers
        if layer.kind == "categorical"
    ]
    return Scaffold(
        catalog=targets[0],
        grid=targets[1],
        pipeline=targets[2],
        layers=layers,
        template=template,
        site_crs=site_crs,
        site_columns=site_xy,
        elements=elements,
        checks=tuple(checks),
    )


# --- rasters ---------------------------------------------------------------------------------


def _raster_files(folder: Path, exclude: Path) -> list[Path]:
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder: pass the folder that holds the GeoTIFFs")
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in RASTER_SUFFIXES and p.is_file() and exclude not in p.parents
    )
    if not found:
        raise SourceError(
            f"{folder} holds no GeoTIFF (*.tif, *.tiff): pass the folder of the covariate rasters"
        )
    return found


def _guess_layers(paths: Sequence[Path]) -> Iterator[GuessedLayer]:
    taken: set[str] = set()
    for path in paths:
        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    raise SourceError(
                        f"{path} has no CRS: assign one (e.g. gdal_edit.py -a_srs EPSG:3035 "
                        f"{path.name}) and run init again"
                    )
                if not src.transform.is_rectilinear:
                    raise SourceError(
                        f"{path} is rotated or sheared: warp it north-up first (gdalwarp)"
                    )
                for band in range(1, src.count + 1):
                    stem = path.stem if src.count == 1 else f"{path.stem}_b{band}"
                    name = _unique(_identifier(stem.lower(), fallback="layer"), taken)
                    taken.add(name)
                    yield _guess_band(src, path, band, name)
        except RasterioIOError as exc:
            raise SourceError(f"GDAL cannot read {path}: {exc}") from exc


def _guess_band(src: rasterio.DatasetReader, path: Path, band: int, name: str) -> GuessedLayer:
    dtype = str(src.dtypes[band - 1])
    classes = _class_codes(src, band) if np.dtype(dtype).kind in "iu" else None
    res_x, res_y = (abs(float(r)) for r in src.res)
    return GuessedLayer(
        name=name,
        path=path,
        band=band,
        kind="continuous" if classes is None else "categorical",
        dtype=dtype,
        crs=_crs_text(CRS.from_user_input(src.crs)),
        resolution=(res_x, res_y),
        geobox=GeoBox((src.height, src.width), src.transform, src.crs),
        classes=classes or (),
        units=src.units[band - 1] or "",
        description=src.descriptions[band - 1] or "",
    )


def _class_codes(src: rasterio.DatasetReader, band: int) -> tuple[int, ...] | None:
    """The band's distinct valid values if it looks like a class map, else None.

    Every block is read (one block in memory at a time): a class found in a sample only would
    leave the rare classes out of the catalog.
    """
    nodata = src.nodata
    codes: set[int] = set()
    for _, window in src.block_windows(band):
        values = np.unique(src.read(band, window=Window(*window.flatten())))
        if nodata is not None:
            values = values[values != nodata]
        codes.update(int(v) for v in values)
        if len(codes) > MAX_GUESSED_CLASSES:
            return None
    if not codes or min(codes) < 0 or max(codes) >= CATEGORICAL_NODATA:
        return None
    return tuple(sorted(codes))


def _crs_text(crs: CRS) -> str:
    """``EPSG:3035`` (or ``ESRI:102025``) when the CRS has such a code, else its WKT."""
    authority = crs.to_authority(min_confidence=90)
    return f"{authority[0]}:{authority[1]}" if authority else crs.to_wkt()


# --- the site table --------------------------------------------------------------------------


def _site_columns(sites: Path) -> tuple[str, ...]:
    if not sites.is_file():
        raise SiteTableError(
            f"site table {sites} does not exist: pass the path of a CSV or Parquet"
        )
    suffix = sites.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(sites, nrows=0)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(sites)
        else:
            raise SiteTableError(
                f"site table {sites} has suffix {sites.suffix!r}: use a .csv or .parquet file"
            )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise SiteTableError(f"{sites} cannot be read ({exc}): fix or re-export it") from exc
    return tuple(str(c) for c in frame.columns)


def _site_coordinates(
    columns: Sequence[str], sites: Path, sites_crs: str | None, template: GuessedLayer
) -> tuple[tuple[str, str], str, str]:
    """The coordinate columns, their CRS, and what the user should check about them."""
    if "x" in columns and "y" in columns:
        if sites_crs is not None:
            return ("x", "y"), sites_crs, ""
        check = (
            f"the sites' x/y are taken to be in the grid's CRS {template.crs} "
            "(--sites-crs or 'sites: crs:' in pipeline.yaml says otherwise)"
        )
        return ("x", "y"), template.crs, check
    if "lon" in columns and "lat" in columns:
        return ("lon", "lat"), sites_crs or "EPSG:4326", ""
    raise SiteTableError(
        f"{sites} has neither x/y nor lon/lat columns (found {list(columns)}): name the "
        "coordinate columns x and y (with --sites-crs) or lon and lat (EPSG:4326)"
    )


# --- the YAML texts --------------------------------------------------------------------------


def _catalog_text(layers: Sequence[GuessedLayer], out: Path) -> str:
    lines = [
        "# Covariate catalog written by `tpgrid init`: one entry per raster band.",
        "# Check each entry: the kind was guessed from the values (integer codes -> categorical),",
        "# units and valid ranges are not in the files. Relative paths are read from this folder.",
        "layers:",
    ]
    for layer in layers:
        res = f"{layer.resolution[0]:g} x {layer.resolution[1]:g}"
        lines += [
            f"  {layer.name}:  # {layer.path.name}: {layer.dtype}, {res} in {_short(layer.crs)}",
            f"    path: {_quoted(_relative(layer.path, out))}",
        ]
        if layer.band != 1:
            lines.append(f"    band: {layer.band}")
        if layer.kind == "categorical":
            lines += [
                f"    kind: categorical  # guessed: {len(layer.classes)} integer codes",
                "    group: covariates  # CHECK: a free name; the report groups predictors by it",
                "    classes:  # CHECK: name each class (the report shows these names)",
                *(f"      {code}: {_quoted(f'class {code}')}" for code in layer.classes),
            ]
        else:
            why = "floating-point values" if layer.dtype.startswith("float") else "many values"
            lines += [
                f"    kind: continuous  # guessed: {why}",
                "    group: covariates  # CHECK: a free name; the report groups predictors by it",
                f"    units: {_quoted(layer.units)}"
                + ("" if layer.units else "  # CHECK: the file does not say"),
                "    # valid_range: [low, high]  # a value outside stops the build",
            ]
        if layer.description:
            lines.append(f"    description: {_quoted(layer.description)}")
    lines += [
        "# A DEM among the layers? `terrain: {dem: <layer>}` derives slope, northness and",
        "# eastness from it on the grid.",
    ]
    return "\n".join(lines) + "\n"


def _grid_text(template: GuessedLayer, out: Path) -> str:
    box = template.geobox.extent.boundingbox
    res_x, res_y = template.resolution
    lines = [
        "# Grid written by `tpgrid init`: the finest raster's own grid, so its pixels are the",
        f"# maps' pixels ({_relative(template.path, out)}). `like: <raster>` instead of crs,",
        "# resolution and extent takes all three from a template raster.",
        f"crs: {_quoted(template.crs)}",
        f"resolution: {res_x:.12g}"
        + ("" if res_x == res_y else f"  # CHECK: its pixels are {res_x:g} x {res_y:g}"),
        "extent: ["
        + ", ".join(f"{v:.12g}" for v in (box.left, box.bottom, box.right, box.top))
        + "]  # x_min, y_min, x_max, y_max in the grid's CRS",
        f"chunk: {_chunk_edge(template)}  # chunk edge in pixels: the unit of work and memory",
        "# mask: area.geojson  # map only inside this polygon (default: every pixel)",
    ]
    return "\n".join(lines) + "\n"


def _pipeline_text(
    name: str,
    sites: Path,
    out: Path,
    site_crs: str,
    site_xy: tuple[str, str],
    elements: Sequence[str],
    columns: Sequence[str],
) -> str:
    calibrated = [e for e in elements if f"{e}_icpms" in columns]
    lines = [
        "# Pipeline written by `tpgrid init`. Check it with `tpgrid run pipeline.yaml --dry-run`,",
        "# then run it with `tpgrid run pipeline.yaml`. Relative paths are read from this folder.",
        f"name: {name}",
        "workdir: work  # cube, models, predictions, published maps and run records",
        "grid: grid.yaml",
        "catalog: catalog.yaml",
        "sites:",
        f"  path: {_quoted(_relative(sites, out))}",
        f"  crs: {_quoted(site_crs)}",
        f"  x: {site_xy[0]}",
        f"  y: {site_xy[1]}",
        "fit:",
        f"  # elements: {json.dumps(list(elements))}  # default: every element column of the"
        " site table",
        "  # calibrate: auto  # elements with an <E>_icpms column are calibrated to it"
        + (f" (here: {', '.join(calibrated)})" if calibrated else " (here: none)"),
        "  # spatial_block_km: 2  # default: derived from the sites' spacing, and recorded",
        "  n_trees: 500",
        "# cluster: cluster.yaml  # or --cluster / --scheduler-address; default: local processes",
    ]
    return "\n".join(lines) + "\n"


def _chunk_edge(template: GuessedLayer) -> int:
    """512, or smaller on a small grid so that its chunks can keep several workers busy."""
    height, width = template.geobox.shape
    for edge in (512, 256):
        if math.ceil(height / edge) * math.ceil(width / edge) >= MIN_CHUNKS:
            return edge
    return 128


def _check_runnable(pipeline: Path) -> None:
    """Read what was written back through the loaders a run uses."""
    config = load_pipeline(pipeline)
    config.grid_spec()
    load_catalog(config.catalog_path)
    read_sites(config.site_source)


# --- small helpers ---------------------------------------------------------------------------


def _identifier(text: str, *, fallback: str) -> str:
    name = re.sub(r"\W+", "_", text).strip("_")
    if not name:
        return fallback
    if name[0].isdigit() or keyword.iskeyword(name):
        name = f"{fallback}_{name}"
    return name


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    return candidate


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when both are on one tree, else absolute."""
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def _quoted(text: str) -> str:
    """A YAML scalar that reads back as exactly ``text`` (a JSON string is valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def _short(crs: str) -> str:
    return crs if len(crs) < 40 else "its CRS (WKT)"
