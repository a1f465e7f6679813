"""Cloud-Optimized GeoTIFFs of a run's layers, written by GDAL's COG driver.

GIS users read the published maps without Zarr (GDAL cannot read Zarr v3): each layer is
copied chunk by chunk into a tiled GeoTIFF, which GDAL then turns into the COG. GDAL's errors
are told apart here (a full disk, or something else), because they name the call that failed
rather than the cause.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.windows import Window

from tpgrid.core.blocks import UNSEEN_NODATA
from tpgrid.errors import StorageError
from tpgrid.grid import ChunkWindow, TargetGrid

#: GDAL block cache of a COG-writing task, MB.
COG_CACHE_MB = 128


def write_cog(array: Path, path: Path, grid: TargetGrid) -> Path:
    """Write the Zarr array at ``array`` (a layer on ``grid``) as a Cloud-Optimized GeoTIFF.
    Run by :func:`~tpgrid.outputs.maps.publish` as one Dask task per COG.

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
        # SystemError: rasterio's "Unknown GDAL Error", raised when GDAL fails without an error
        # of its own, as the COG driver can when libtiff runs out of space mid-copy.
        except (RasterioError, CPLE_BaseError, SystemError) as exc:
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
