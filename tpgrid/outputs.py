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
element (mean and sd with colour bars) and a STAC item describing the run and its assets, each
with its size and checksum. The directory is assembled beside its final path and swapped in
when complete. The COGs have the
grid's shape and transform; GDAL's COG driver writes them, one Dask task per COG.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
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
from tpgrid.core.blocks import UNSEEN_NODATA
from tpgrid.errors import OutputExistsError, PredictionError, StorageError
from tpgrid.grid import ChunkWindow, GridSpec, TargetGrid
from tpgrid.integrity import Damage, FileRecord, check_file, file_record
from tpgrid.jsonable import plain
from tpgrid.store import (
    ATTR_COMPLETE,
    VariableLayout,
    link_file,
    read_attrs,
    staging_path,
    swap_in,
)
from tpgrid.tasks import Progress, task_runner

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

LAYERS = ("mean", "variance", "sd", "unseen")
UNITS = "mg/kg"
VARIANCE_UNITS = "mg2 kg-2"  # (mg/kg)², in UDUNITS syntax as CF asks
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
    # file:size and file:checksum of every asset: anyone can verify a published version.
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
]
#: Multihash prefix of a SHA-256 digest (code 0x12, length 0x20), as in ``file:checksum``.
SHA256_MULTIHASH = "1220"
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
    damaged: tuple[Damage, ...] = ()  # files of the previous publication rendered afresh


@dataclass(frozen=True, eq=False)
class MapFiles:
    """The maps of a run written into ``directory`` by :func:`write_maps`, and what its STAC
    item (:func:`write_item`) needs: the run, its elements and their digests, the COG shape,
    and the records of files linked from a previous publication (checked, not hashed again)."""

    directory: Path
    attrs: Mapping[str, Any]
    run: Mapping[str, Any]
    grid: TargetGrid
    elements: tuple[str, ...]
    digests: Mapping[str, str]
    cog_shape: tuple[int, int]
    linked: Mapping[str, FileRecord]
    reused: tuple[str, ...]  # elements all of whose files were linked
    damaged: tuple[Damage, ...]  # files of the previous publication that failed their check


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
    maps are byte-identical to those published there are hard-linked from it, not written again,
    once each has been checked against the size and checksum its STAC item records.
    """
    prediction, directory = Path(prediction), Path(directory)
    _, run = open_prediction(prediction)
    elements = list(run["models"])
    if published_run(directory) == run["run_id"]:
        log.info("%s already holds run %s: nothing to publish", directory, run["run_id"][:12])
        return _report(directory, elements, up_to_date=True)
    if directory.exists() and not overwrite:
        raise OutputExistsError(
            f"{directory} exists and does not hold run {run['run_id'][:12]}: choose another "
            "directory or pass --overwrite to replace it"
        )
    staging = staging_path(directory)
    staging.mkdir(parents=True)
    try:
        maps = write_maps(prediction, staging, previous=previous)
        write_item(maps)
        swap_in(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _report(directory, elements, up_to_date=False, reused=maps.reused, damaged=maps.damaged)


def write_maps(
    prediction: str | Path,
    directory: str | Path,
    *,
    previous: str | Path | None = None,
    progress: Progress | None = None,
) -> MapFiles:
    """Write the COGs and quicklooks of the run at ``prediction`` into the existing, empty
    ``directory`` (no STAC item: :func:`write_item` writes it, last).

    With ``previous``, a file of an element whose maps are unchanged is hard-linked from there
    if it matches the size and checksum recorded in its STAC item; a file that does not is
    rendered afresh and listed in ``damaged``. ``progress("maps" | "quicklooks", done, total)``
    is called as files are written.
    """
    prediction, directory = Path(prediction), Path(directory)
    ds, run = open_prediction(prediction)
    elements = tuple(run["models"])
    grid = TargetGrid.from_spec(GridSpec.model_validate(run["grid"]))
    digests = {element: element_digest(prediction, element) for element in elements}
    linked: dict[str, FileRecord] = {}
    damaged: list[Damage] = []
    if previous is not None:
        linked, damaged = _link_unchanged(Path(previous), directory, digests)
    cogs = [(e, layer) for e in elements for layer in LAYERS if _cog(e, layer) not in linked]
    with task_runner(local_threads=1) as runner:
        written = [
            runner.submit(
                write_cog, prediction / variable_name(e, layer), directory / _cog(e, layer), grid
            )
            for e, layer in cogs
        ]
        runner.gather(written, _stage(progress, "maps"))
    drawn = [e for e in elements if _quicklook(e) not in linked]
    for done, element in enumerate(drawn, 1):
        quicklook_figure(directory, element).savefig(directory / _quicklook(element), dpi=100)
        if progress is not None:
            progress("quicklooks", done, len(drawn))
    with rasterio.open(directory / _cog(elements[0], LAYERS[0])) as cog:
        cog_shape = (cog.height, cog.width)
    reused = tuple(e for e in elements if all(n in linked for n in _element_files(e)))
    if reused:
        log.info("%s: files of %s linked from %s", directory, list(reused), previous)
    return MapFiles(
        directory,
        ds.attrs,
        run,
        grid,
        elements,
        digests,
        cog_shape,
        linked,
        reused,
        tuple(damaged),
    )


def write_item(
    maps: MapFiles,
    assets: Mapping[str, Mapping[str, Any]] | None = None,
    links: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write the STAC item of ``maps`` into their directory, with ``assets`` and ``links``
    beside the maps' own; every asset gets the file extension's size and checksum."""
    item = stac_item(maps.attrs, maps.run, maps.grid, maps.elements, maps.cog_shape)
    item["properties"][ITEM_DIGESTS] = dict(maps.digests)
    item["assets"].update({key: dict(value) for key, value in (assets or {}).items()})
    item["links"].extend(dict(link) for link in links)
    for asset in item["assets"].values():
        name = _relative(asset["href"])
        record = maps.linked.get(name) or file_record(maps.directory / name)
        asset["file:size"] = record.size
        asset["file:checksum"] = record.multihash
    path = maps.directory / STAC_ITEM
    path.write_text(json.dumps(item, indent=2) + "\n")
    return path


def asset_records(item: Mapping[str, Any]) -> dict[str, FileRecord | None]:
    """Each asset's file (path relative to the item) and the size and SHA-256 the item records
    for it; None where it records none (or not as a SHA-256 multihash)."""
    records: dict[str, FileRecord | None] = {}
    for asset in dict(item["assets"]).values():
        size, checksum = asset.get("file:size"), asset.get("file:checksum")
        valid = (
            isinstance(size, int)
            and isinstance(checksum, str)
            and checksum.startswith(SHA256_MULTIHASH)
            and len(checksum) == len(SHA256_MULTIHASH) + 64
        )
        records[_relative(str(asset["href"]))] = (
            FileRecord(int(size), checksum[len(SHA256_MULTIHASH) :]) if valid else None
        )
    return records


def read_item(directory: Path) -> dict[str, Any]:
    """The STAC item in ``directory``; OSError or ValueError when it is missing or not one."""
    item = json.loads((directory / STAC_ITEM).read_text())
    if not isinstance(item, dict) or not isinstance(item.get("assets"), dict):
        raise ValueError("not a STAC item with assets")
    return item


def _link_unchanged(
    previous: Path, directory: Path, digests: Mapping[str, str]
) -> tuple[dict[str, FileRecord], list[Damage]]:
    """Hard-link into ``directory`` the files of every element whose maps equal those of the
    publication at ``previous``, each only if it matches its record there; the linked files'
    records, and the files that did not match."""
    try:
        item = read_item(previous)
        published: dict[str, str] = dict(item["properties"].get(ITEM_DIGESTS, {}))
        records = asset_records(item)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: no readable STAC item (%s): every file is rendered afresh", previous, exc)
        return {}, [Damage(previous / STAC_ITEM, f"missing or unreadable: {exc}")]
    linked: dict[str, FileRecord] = {}
    damaged: list[Damage] = []
    for element, digest in digests.items():
        if published.get(element) != digest:
            continue
        for name in _element_files(element):
            record = records.get(name)
            if record is None:  # nothing to check it against (published without checksums)
                continue
            damage = check_readable(previous / name, record)
            if damage is not None:
                log.warning("%s: rendered afresh", damage)
                damaged.append(damage)
                continue
            link_file(previous / name, directory / name)
            linked[name] = record
    return linked, damaged


def check_readable(path: Path, record: FileRecord) -> Damage | None:
    """:func:`check_file`, with a file that cannot be read reported as damage too."""
    try:
        return check_file(path, record)
    except OSError as exc:
        return Damage(path, f"unreadable: {exc.strerror or exc}")


def _relative(href: str) -> str:
    """An asset's href as a path relative to its item (hrefs here are ``./name``)."""
    return href.removeprefix("./")


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


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
    reused: Sequence[str] = (),
    damaged: Sequence[Damage] = (),
) -> PublishReport:
    return PublishReport(
        directory=directory,
        reused=tuple(sorted(reused)),
        damaged=tuple(damaged),
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
        "geometry": plain(footprint.json),
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
