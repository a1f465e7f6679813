"""The product of a prediction run: its layers and attributes, and how it is published.

A run is one Zarr v3 group on the cube's grid (written by :mod:`tpgrid.predict`) holding, per
element, the variables ``{element}_{layer}``:

========  =======  ===========  ===================================================
layer     dtype    nodata       meaning
========  =======  ===========  ===================================================
mean      float32  NaN          mean over the forest's trees, mg/kg
variance  float32  NaN          variance between the trees' predictions, (mg/kg)²
sd        float32  NaN          its square root, mg/kg
unseen    uint8    255          1 where a categorical class was never seen in training
========  =======  ===========  ===================================================

with CF attributes, a ``spatial_ref`` grid mapping and ACDD discovery attributes. Publishing
turns the group into a directory that GIS users and catalogues can read without Zarr (GDAL
cannot read Zarr v3): one Cloud-Optimized GeoTIFF per element and layer, one quicklook PNG per
element (mean and sd with colour bars) and a STAC item describing the run and its assets. The
directory is assembled beside its final path and swapped in when complete. The COGs have the
grid's shape and transform; GDAL's COG driver writes them, one Dask task per COG.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import rasterio
import rasterio.shutil
import xarray as xr
import zarr
from pyproj import CRS
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from tpgrid import __version__
from tpgrid.errors import OutputExistsError, PredictionError, StorageError
from tpgrid.grid import ChunkWindow, GridSpec, TargetGrid
from tpgrid.store import (
    ATTR_COMPLETE,
    VariableLayout,
    link_file,
    read_attrs,
    staging_path,
    swap_in,
)
from tpgrid.tasks import task_runner

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

LAYERS = ("mean", "variance", "sd", "unseen")
UNITS = "mg/kg"
VARIANCE_UNITS = "mg2 kg-2"  # (mg/kg)², in UDUNITS syntax as CF asks
UNSEEN_NODATA = 255
#: Group attribute with the run's identity and inputs (see `tpgrid.predict`).
ATTR_RUN = "tpgrid:run"
STAC_ITEM = "item.json"
#: STAC item property: per element, the digest of the maps its files were made from.
ITEM_DIGESTS = "tpgrid:element_digests"
#: Part of every element digest: a change in how files are made invalidates earlier ones.
FORMAT_VERSION = "tpgrid-publication/2"
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
#: GDAL block cache of a COG-writing task, MB.
COG_CACHE_MB = 128
#: Longest side of a quicklook panel, in pixels of the map (read from the COG's overviews).
QUICKLOOK_PX = 800


def variable_name(element: str, layer: str) -> str:
    """The Zarr variable (and COG stem) of one layer of one element, e.g. ``Fe_mean``."""
    return f"{element}_{layer}"


def layer_layouts(element: str, n_trees: int, unseen: str) -> dict[str, VariableLayout]:
    """The four variables of ``element`` with their CF attributes (``unseen``: the policy)."""
    common = {"coverage_content_type": "modelResult", "tpgrid:element": element}
    return {
        variable_name(element, "mean"): VariableLayout(
            "float32",
            np.nan,
            common
            | {
                "long_name": f"{element} content, mean of {n_trees} random-forest trees",
                "units": UNITS,
            },
        ),
        variable_name(element, "variance"): VariableLayout(
            "float32",
            np.nan,
            common
            | {
                "long_name": f"{element} content, variance between {n_trees} trees",
                "units": VARIANCE_UNITS,
            },
        ),
        variable_name(element, "sd"): VariableLayout(
            "float32",
            np.nan,
            common
            | {
                "long_name": f"{element} content, standard deviation between {n_trees} trees",
                "units": UNITS,
            },
        ),
        variable_name(element, "unseen"): VariableLayout(
            "uint8",
            UNSEEN_NODATA,
            common
            | {
                "long_name": f"categorical class never seen when fitting the {element} model",
                "flag_values": [0, 1],
                "flag_meanings": "class_seen_in_training class_not_seen_in_training",
                "tpgrid:unseen_policy": unseen,
            },
        ),
    }


def global_attrs(grid: TargetGrid, elements: Sequence[str], run_id: str) -> dict[str, Any]:
    """CF and ACDD-1.3 attributes of a run's group."""
    footprint = grid.geobox.footprint("EPSG:4326", npoints=20)
    box = footprint.boundingbox
    resolution = f"{grid.spec.resolution:g} {grid.crs.units[0]}"
    return {
        "Conventions": "CF-1.10, ACDD-1.3",
        "title": f"Soil micronutrients ({', '.join(elements)}) of the Tibetan Plateau at "
        f"{resolution}, random forest",
        "summary": "Topsoil content of each element predicted by a random forest from "
        "environmental covariates, with the variance between the forest's trees as a "
        "per-pixel uncertainty.",
        "keywords": "soil, micronutrients, trace elements, Tibetan Plateau, random forest, "
        + ", ".join(elements),
        "id": run_id,
        "naming_authority": "tpgrid",
        "product_version": __version__,
        "processing_level": "model output",
        "source": f"tpgrid {__version__}: packed random forests walked per chunk with numba",
        # No wall-clock time here: a group is identified by its inputs, and a resumed run must
        # end byte-identical to an uninterrupted one. Times go to the run records and the STAC
        # item written when the run is published.
        "history": f"tpgrid {__version__} predict",
        "geospatial_bounds": footprint.wkt,
        "geospatial_bounds_crs": "EPSG:4326",
        "geospatial_lon_min": box.left,
        "geospatial_lon_max": box.right,
        "geospatial_lat_min": box.bottom,
        "geospatial_lat_max": box.top,
        "geospatial_lon_units": "degrees_east",
        "geospatial_lat_units": "degrees_north",
        "spatial_resolution": resolution,
    }


def open_prediction(path: str | Path) -> tuple[xr.Dataset, dict[str, Any]]:
    """A complete run's group (lazy) and its run record; :class:`PredictionError` otherwise."""
    path = Path(path)
    attrs = read_attrs(path)
    if attrs is None or not attrs.get(ATTR_COMPLETE) or ATTR_RUN not in attrs:
        raise PredictionError(
            f"{path} is not a complete tpgrid prediction: run `tpgrid predict` to make it"
        )
    ds: xr.Dataset = xr.open_zarr(path, consolidated=True, zarr_format=3, decode_coords="all")
    run: dict[str, Any] = attrs[ATTR_RUN]
    return ds, run


# --- publishing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishReport:
    """Where :func:`publish` put the run's files; ``up_to_date`` when they were already there."""

    directory: Path
    cogs: tuple[Path, ...]
    quicklooks: tuple[Path, ...]
    stac_item: Path
    up_to_date: bool
    reused: tuple[str, ...] = ()  # elements whose files were linked from a previous publication


def publish(
    prediction: str | Path,
    directory: str | Path,
    *,
    overwrite: bool = False,
    previous: str | Path | None = None,
) -> PublishReport:
    """Write COGs, quicklook PNGs and a STAC item of the run at ``prediction`` into ``directory``.

    A directory already holding this run is left as it is; one holding anything else is only
    replaced when ``overwrite``. COGs are written by the current Dask client, if any. With
    ``previous`` (an earlier publication of the same product), the files of every element whose
    maps are byte-identical to those published there are hard-linked from it, not written again.
    """
    prediction, directory = Path(prediction), Path(directory)
    ds, run = open_prediction(prediction)
    elements = list(run["models"])
    if published_run(directory) == run["run_id"]:
        log.info("%s already holds run %s: nothing to publish", directory, run["run_id"][:12])
        return _report(directory, elements, up_to_date=True)
    if directory.exists() and not overwrite:
        raise OutputExistsError(
            f"{directory} exists and does not hold run {run['run_id'][:12]}: choose another "
            "directory or pass --overwrite to replace it"
        )
    grid = TargetGrid.from_spec(GridSpec.model_validate(run["grid"]))
    digests = {element: element_digest(prediction, element) for element in elements}
    previous_dir = Path(previous) if previous is not None else None
    reused = _reusable(previous_dir, digests) if previous_dir is not None else set()
    staging = staging_path(directory)
    staging.mkdir(parents=True)
    try:
        if previous_dir is not None:
            for element in sorted(reused):
                for name in _element_files(element):
                    link_file(previous_dir / name, staging / name)
        fresh = [element for element in elements if element not in reused]
        with task_runner(local_threads=1) as runner:
            written = [
                runner.submit(
                    write_cog, prediction / variable_name(e, layer), staging / _cog(e, layer), grid
                )
                for e in fresh
                for layer in LAYERS
            ]
            runner.gather(written)
        for element in fresh:
            quicklook_figure(staging, element).savefig(staging / _quicklook(element), dpi=100)
        with rasterio.open(staging / _cog(elements[0], LAYERS[0])) as cog:
            cog_shape = (cog.height, cog.width)
        item = stac_item(ds.attrs, run, grid, elements, cog_shape)
        item["properties"][ITEM_DIGESTS] = digests
        (staging / STAC_ITEM).write_text(json.dumps(item, indent=2) + "\n")
        swap_in(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if reused:
        log.info("%s: files of %s linked from %s", directory, sorted(reused), previous)
    return _report(directory, elements, up_to_date=False, reused=reused)


def element_digest(prediction: Path, element: str) -> str:
    """SHA-256 of an element's stored maps: every layer's metadata and chunk files. Equal
    digests mean byte-identical maps (unchanged chunks are hard-linked between runs)."""
    digest = hashlib.sha256(FORMAT_VERSION.encode())
    for layer in LAYERS:
        array = prediction / variable_name(element, layer)
        for path in sorted(p for p in array.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(prediction)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _reusable(previous: Path, digests: Mapping[str, str]) -> set[str]:
    """Elements whose maps equal those of the publication at ``previous`` (all its files there)."""
    try:
        item = json.loads((previous / STAC_ITEM).read_text())
        published: dict[str, str] = item["properties"].get(ITEM_DIGESTS, {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return {
        element
        for element, digest in digests.items()
        if published.get(element) == digest
        and all((previous / name).is_file() for name in _element_files(element))
    }


def _cog(element: str, layer: str) -> str:
    return f"{variable_name(element, layer)}.tif"


def _quicklook(element: str) -> str:
    return f"{element}_quicklook.png"


def _element_files(element: str) -> list[str]:
    """An element's published files: its COGs and its quicklook."""
    return [*(_cog(element, layer) for layer in LAYERS), _quicklook(element)]


def published_run(directory: Path) -> str | None:
    """The run id of the files published in ``directory``, or None."""
    try:
        item = json.loads((directory / STAC_ITEM).read_text())
        return str(item["properties"]["tpgrid:run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _report(
    directory: Path,
    elements: Sequence[str],
    up_to_date: bool,
    reused: set[str] | frozenset[str] = frozenset(),
) -> PublishReport:
    return PublishReport(
        directory=directory,
        reused=tuple(sorted(reused)),
        cogs=tuple(directory / _cog(e, layer) for e in elements for layer in LAYERS),
        quicklooks=tuple(directory / _quicklook(e) for e in elements),
        stac_item=directory / STAC_ITEM,
        up_to_date=up_to_date,
    )


def write_cog(array: Path, path: Path, grid: TargetGrid) -> Path:
    """Write the Zarr array at ``array`` (a layer on ``grid``) as a Cloud-Optimized GeoTIFF.
    Run by :func:`publish` as one Dask task per COG.

    The layer is copied chunk by chunk into a tiled GeoTIFF beside ``path``, which GDAL's COG
    driver then turns into the COG (deflate, 256-px tiles, overviews averaged, or nearest for
    the uint8 flag layer; statistics for float layers), so memory follows the chunk and GDAL's
    cache, not the map. The temporary file is removed either way.
    """
    source = zarr.open_array(array, mode="r", zarr_format=3)
    categorical = source.dtype == np.uint8
    nodata = UNSEEN_NODATA if categorical else np.nan
    tiled = path.with_name(f".{path.name}.tiles.tif")
    profile = {
        "driver": "GTiff",
        "width": grid.shape[1],
        "height": grid.shape[0],
        "count": 1,
        "dtype": str(source.dtype),
        "crs": grid.crs_wkt,
        "transform": grid.geobox.affine,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "BIGTIFF": "IF_SAFER",
    }
    failed: StorageError | None = None
    # GDAL's block cache defaults to 5 % of the machine's memory per process: cap it.
    with rasterio.Env(GDAL_CACHEMAX=COG_CACHE_MB):
        try:
            with rasterio.open(tiled, "w", **profile) as dst:
                dst.set_band_description(1, _band_description(source.attrs))
                for window in grid.windows():
                    block = np.asarray(source[window.rows, window.cols])
                    dst.write(block, 1, window=_rasterio_window(window))
            rasterio.shutil.copy(
                tiled,
                path,
                driver="COG",
                COMPRESS="DEFLATE",
                LEVEL=1,  # float maps: ~2 % larger than at the default level, faster
                BLOCKSIZE=256,
                OVERVIEW_RESAMPLING="NEAREST" if categorical else "AVERAGE",
                STATISTICS="NO" if categorical else "YES",
                BIGTIFF="IF_SAFER",
            )
        except (RasterioError, CPLE_BaseError) as exc:
            # Checked before the temporary file goes: it is part of what filled the disk.
            failed = _cog_write_error(path, exc)
        finally:
            tiled.unlink(missing_ok=True)
    if failed is not None:
        # Raised out here, without GDAL's exception as its context: that does not survive
        # the pickling back from a Dask worker, which would then send a bare Exception.
        raise failed
    return path


def _cog_write_error(path: Path, exc: Exception) -> StorageError:
    """GDAL names the call that failed ("TIFFAppendToStrip:Seek error"), rarely the cause: a
    full disk is told by the free space left on the COG's file system, or by GDAL's message."""
    try:
        full = shutil.disk_usage(path.parent).free < _FULL_BELOW
    except OSError:
        full = False
    if full or "no space left" in str(exc).lower():
        return StorageError.from_os_error(OSError(errno.ENOSPC, "no space", str(path)))
    return StorageError(
        f"{path}: GDAL could not write this COG ({exc}): check that its file system is writable "
        "and has space, then run the command again"
    )


#: Less free space than this after a failed write: the disk is full (GDAL writes a tile, at
#: most a few hundred KB, at a time).
_FULL_BELOW = 1 << 20


def _rasterio_window(window: ChunkWindow) -> Window:
    rows, cols = window.rows, window.cols
    return Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)


def _band_description(attrs: Mapping[str, Any]) -> str:
    """The band description GDAL shows (COGs carry no other attributes): long name and units."""
    units = attrs.get("units")
    long_name = str(attrs["long_name"])
    return f"{long_name} ({units})" if units else long_name


def quicklook_figure(directory: Path, element: str) -> Figure:
    """Mean and sd of ``element`` side by side, each with a colour bar in mg/kg, read from the
    COGs in ``directory``."""
    # Imported here: prediction workers import this module and never draw.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("mean", "viridis"), ("sd", "magma")]
    figure = Figure(figsize=(11, 4.6), layout="constrained")
    FigureCanvasAgg(figure)  # attaches a non-interactive canvas: no pyplot, no display
    for k, (layer, colours) in enumerate(panels):
        values, extent_km = _overview(directory / _cog(element, layer))
        axes = figure.add_subplot(1, len(panels), k + 1)
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        image = axes.imshow(
            np.ma.masked_invalid(values), cmap=colours, vmin=low, vmax=high, extent=extent_km
        )
        axes.set_title(f"{element} {'mean' if layer == 'mean' else 'between-tree SD'}")
        axes.set_xlabel("easting (km)")
        axes.set_ylabel("northing (km)")
        figure.colorbar(image, ax=axes, shrink=0.85, label=f"{element} ({UNITS})")
    return figure


def _overview(cog: Path) -> tuple[npt.NDArray[np.float32], tuple[float, float, float, float]]:
    """The COG at most `QUICKLOOK_PX` pixels across (GDAL reads a fitting overview) and its
    extent in km (left, right, bottom, top)."""
    with rasterio.open(cog) as src:
        scale = max(1.0, max(src.width, src.height) / QUICKLOOK_PX)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        values = src.read(1, out_shape=shape, resampling=Resampling.average, masked=True)
        b = src.bounds
    filled = values.astype(np.float32).filled(np.nan)
    return filled, (b.left / 1e3, b.right / 1e3, b.bottom / 1e3, b.top / 1e3)


def stac_item(
    attrs: Mapping[str, Any],
    run: Mapping[str, Any],
    grid: TargetGrid,
    elements: Sequence[str],
    cog_shape: tuple[int, int],
) -> dict[str, Any]:
    """A STAC 1.0 Item (projection and raster extensions) for the published files of a run,
    dated now (its publication).

    ``cog_shape`` is the (rows, cols) of the COGs (the grid's); the transform is the grid's.
    Asset hrefs are relative to the item, so the directory can be moved as a whole.
    """
    footprint = grid.geobox.footprint("EPSG:4326", npoints=20)
    box = footprint.boundingbox
    published = datetime.now(UTC).isoformat(timespec="seconds")
    assets: dict[str, Any] = {}
    for element in elements:
        for layer in LAYERS:
            name = variable_name(element, layer)
            unseen = layer == "unseen"
            assets[name] = {
                "href": f"./{_cog(element, layer)}",
                "type": COG_MEDIA_TYPE,
                "roles": ["data"],
                "title": f"{element} {layer}",
                "raster:bands": [
                    {
                        "data_type": "uint8" if unseen else "float32",
                        "nodata": UNSEEN_NODATA if unseen else "nan",
                        **(
                            {}
                            if unseen
                            else {"unit": VARIANCE_UNITS if layer == "variance" else UNITS}
                        ),
                    }
                ],
            }
        assets[f"{element}_quicklook"] = {
            "href": f"./{_quicklook(element)}",
            "type": "image/png",
            "roles": ["overview"],
            "title": f"{element} mean and between-tree SD",
        }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": STAC_EXTENSIONS,
        "id": f"tpgrid-{run['run_id'][:16]}",
        "geometry": _plain(footprint.json),
        "bbox": [box.left, box.bottom, box.right, box.top],
        "properties": {
            "datetime": published,
            "created": published,
            "title": attrs["title"],
            "description": attrs["summary"],
            "proj:code": _authority_code(grid),
            "proj:wkt2": grid.crs.to_wkt(),
            "proj:shape": list(cog_shape),
            "proj:transform": list(grid.geobox.affine)[:6],
            "proj:bbox": list(grid.geobox.expand(cog_shape).extent.boundingbox.bbox),
            "tpgrid:run_id": run["run_id"],
            "tpgrid:unseen": run["unseen"],
            "tpgrid:models": {e: run["models"][e]["model_hash"] for e in elements},
        },
        "assets": assets,
        "links": [],
    }


def _authority_code(grid: TargetGrid) -> str | None:
    """``"AUTHORITY:CODE"`` of the grid's CRS, or None for a CRS without one (then only
    ``proj:wkt2`` describes it)."""
    authority = CRS.from_wkt(grid.crs_wkt).to_authority()
    return f"{authority[0]}:{authority[1]}" if authority else None


def _plain(value: Any) -> Any:
    """GeoJSON from odc-geo (tuples) as plain JSON lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
