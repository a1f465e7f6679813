"""The target grid: one immutable CRS + affine + shape + chunking that every layer, site and
output is aligned to.

Pixel-is-area: pixel ``(row, col)`` covers ``[x0 + col·res, x0 + (col+1)·res)`` in x, with the
north-up affine of an odc-geo ``GeoBox``. The default is the Tibetan Plateau at 1,000 m in Asia
North Albers Equal Area (ESRI:102025), covering 79–105 °E × 27–40 °N with edges snapped to whole
kilometres.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import numpy.typing as npt
from odc.geo.crs import CRS as OdcCRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box, polygon
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import geometry_mask

from tpgrid.errors import ConfigError, GridError
from tpgrid.yamlfile import read_mapping, validated

DEFAULT_CRS = "ESRI:102025"
PLATEAU_BBOX = (79.0, 27.0, 105.0, 40.0)

# Approximate outline of the Tibetan Plateau (lon, lat), after the 3,000 m boundary of
# Zhang et al. (2014), simplified to ~0.5° and clipped to the 79–105 °E default extent.
PLATEAU_OUTLINE: tuple[tuple[float, float], ...] = (
    (79.0, 30.3),
    (81.0, 29.8),
    (83.0, 28.9),
    (85.0, 28.2),
    (87.0, 27.8),
    (89.0, 27.6),
    (91.0, 27.6),
    (93.0, 27.8),
    (95.0, 28.0),
    (97.0, 27.6),
    (98.5, 27.2),
    (100.5, 27.2),
    (101.5, 28.5),
    (102.3, 30.0),
    (103.0, 31.2),
    (103.8, 32.5),
    (104.3, 33.5),
    (104.0, 34.8),
    (103.2, 35.8),
    (102.5, 36.8),
    (101.5, 37.8),
    (100.0, 38.8),
    (98.5, 39.5),
    (97.0, 39.7),
    (95.0, 39.4),
    (93.0, 39.0),
    (91.0, 38.6),
    (89.0, 37.8),
    (87.0, 37.0),
    (85.0, 36.6),
    (83.0, 36.4),
    (81.0, 36.3),
    (79.0, 36.0),
    (79.0, 30.3),
)


class GridSpec(BaseModel):
    """What a pipeline says about its grid (YAML-friendly, validated, frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    crs: str = DEFAULT_CRS
    resolution: float = Field(1000.0, gt=0, description="pixel size in CRS units (m or °)")
    bbox: tuple[float, float, float, float] = Field(
        PLATEAU_BBOX, description="lon_min, lat_min, lon_max, lat_max in EPSG:4326"
    )
    chunk: int = Field(512, ge=16, le=8192, description="chunk edge in pixels")
    mask: str = Field(
        "plateau",
        description="'plateau' (built-in outline), 'bbox' (every pixel) or a GeoJSON path",
    )

    @field_validator("crs")
    @classmethod
    def _crs_is_known(cls, value: str) -> str:
        try:
            CRS.from_user_input(value)
        except CRSError as exc:
            raise ValueError(f"unknown CRS {value!r}: use an EPSG/ESRI code or WKT") from exc
        return value

    @field_validator("bbox")
    @classmethod
    def _bbox_is_ordered(
        cls, value: tuple[float, float, float, float]
    ) -> tuple[float, float, float, float]:
        lon_min, lat_min, lon_max, lat_max = value
        if not (-180 <= lon_min < lon_max <= 180 and -90 <= lat_min < lat_max <= 90):
            raise ValueError(
                "bbox must be lon_min < lon_max within ±180, lat_min < lat_max within ±90"
            )
        return value


def load_grid_spec(path: str | Path) -> GridSpec:
    """Read a grid spec from YAML, naming the file in any error."""
    data = read_mapping(path, "grid file", "pass the path of a grid YAML")
    return validated(GridSpec.model_validate, data, f"grid file {path}")


def chunk_key(index: tuple[int, int]) -> str:
    """``"i.j"``: how records, hashes and done markers name the chunk at block ``index``."""
    return f"{index[0]}.{index[1]}"


@dataclass(frozen=True)
class ChunkWindow:
    """One chunk of the grid: its block index and pixel slices."""

    index: tuple[int, int]
    rows: slice
    cols: slice

    @property
    def key(self) -> str:
        """The chunk's key, ``"i.j"``."""
        return chunk_key(self.index)


@dataclass(frozen=True)
class TargetGrid:
    """The grid every layer is reprojected to. Build it with :meth:`from_spec`."""

    spec: GridSpec
    geobox: GeoBox

    @classmethod
    def from_spec(cls, spec: GridSpec | None = None) -> TargetGrid:
        spec = spec or GridSpec()
        crs = CRS.from_user_input(spec.crs)
        # Densify the lon/lat box edges before projecting: in a conic projection the
        # parallels curve, so the corners alone would cut off the southern rim.
        footprint = box(*spec.bbox, "EPSG:4326").to_crs(spec.crs, resolution=0.01)
        geobox = GeoBox.from_bbox(footprint.boundingbox, spec.crs, resolution=spec.resolution)
        if geobox.width * geobox.height == 0:
            raise GridError(
                f"grid {spec.bbox} at {spec.resolution} {crs.axis_info[0].unit_name} is empty"
            )
        return cls(spec=spec, geobox=geobox)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return (self.geobox.height, self.geobox.width)

    @property
    def crs(self) -> OdcCRS:
        """The grid's CRS (a GeoBox built from a spec always has one)."""
        crs = self.geobox.crs
        assert crs is not None
        return crs

    @property
    def crs_wkt(self) -> str:
        return str(self.crs.wkt)

    @property
    def is_geographic(self) -> bool:
        return bool(self.crs.geographic)

    @property
    def chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Dask chunks along (y, x)."""
        return tuple(_split(n, self.spec.chunk) for n in self.shape)  # type: ignore[return-value]

    @property
    def n_chunks(self) -> tuple[int, int]:
        return (len(self.chunks[0]), len(self.chunks[1]))

    def windows(self) -> Iterator[ChunkWindow]:
        """Every chunk, row-major."""
        c = self.spec.chunk
        rows, cols = self.shape
        for i in range(math.ceil(rows / c)):
            for j in range(math.ceil(cols / c)):
                yield ChunkWindow(
                    (i, j),
                    slice(i * c, min((i + 1) * c, rows)),
                    slice(j * c, min((j + 1) * c, cols)),
                )

    def coords(self) -> dict[str, npt.NDArray[np.float64]]:
        """Pixel-centre coordinates for dims ``(y, x)`` (lat/lon values on a geographic grid)."""
        y, x = (np.asarray(coord.values) for coord in self.geobox.coordinates.values())
        return {"y": y, "x": x}

    def pixel_index(
        self, lon: npt.ArrayLike, lat: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Row and column of the pixel containing each lon/lat point (EPSG:4326).

        Returns ``(row, col, inside)``; outside points get row = col = -1. A point on a pixel's
        west/north edge belongs to that pixel (half-open intervals, pixel-is-area).
        """
        lon_arr = np.asarray(lon, dtype="float64")
        lat_arr = np.asarray(lat, dtype="float64")
        to_grid = Transformer.from_crs("EPSG:4326", self.crs_wkt, always_xy=True)
        x, y = to_grid.transform(lon_arr, lat_arr)
        col_f, row_f = ~self.geobox.affine * (np.asarray(x), np.asarray(y))
        row = np.floor(np.asarray(row_f)).astype("int64")
        col = np.floor(np.asarray(col_f)).astype("int64")
        rows, cols = self.shape
        inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols) & np.isfinite(row_f)
        return np.where(inside, row, -1), np.where(inside, col, -1), inside

    def pixel_lonlat(
        self, row: npt.ArrayLike, col: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Lon/lat (EPSG:4326) of the centres of the given pixels."""
        col_c = np.asarray(col, dtype="float64") + 0.5
        row_c = np.asarray(row, dtype="float64") + 0.5
        x, y = self.geobox.affine * (col_c, row_c)  # type: ignore[operator]
        to_lonlat = Transformer.from_crs(self.crs_wkt, "EPSG:4326", always_xy=True)
        lon, lat = to_lonlat.transform(np.asarray(x), np.asarray(y))
        return np.asarray(lon), np.asarray(lat)

    def pixel_size_m(self) -> tuple[npt.NDArray[np.float64], float]:
        """Pixel width per row and pixel height, in metres (for slope on the grid).

        On a projected grid both are the resolution; on a geographic grid the width shrinks
        with the cosine of each row's latitude.
        """
        rows = self.shape[0]
        res_x, res_y = abs(self.geobox.resolution.x), abs(self.geobox.resolution.y)
        if not self.is_geographic:
            return np.full(rows, res_x), res_y
        metres_per_degree = 2 * math.pi * 6_371_008.8 / 360
        lat = np.asarray(self.geobox.coordinates["latitude"].values, dtype="float64")
        return res_x * metres_per_degree * np.cos(np.radians(lat)), res_y * metres_per_degree

    def mask_geometry(self) -> Geometry | None:
        """The area of interest in EPSG:4326, or None when every pixel counts."""
        if self.spec.mask == "bbox":
            return None
        if self.spec.mask == "plateau":
            return polygon(list(PLATEAU_OUTLINE), "EPSG:4326")
        path = Path(self.spec.mask)
        if not path.is_file():
            raise ConfigError(
                f"grid mask {path} does not exist: use 'plateau', 'bbox' or a GeoJSON polygon file"
            )
        doc = json.loads(path.read_text())
        geometry = doc["features"][0]["geometry"] if doc.get("type") == "FeatureCollection" else doc
        return Geometry(geometry, "EPSG:4326")

    def mask(self) -> da.Array:
        """Lazy boolean array, True on pixels inside the area of interest; one chunk at a time."""
        geometry = self.mask_geometry()
        if geometry is None:
            everywhere: da.Array = da.ones(self.shape, chunks=self.chunks, dtype=bool)
            return everywhere
        in_grid_crs = geometry.to_crs(self.crs, resolution=abs(self.geobox.resolution.x))
        shapes = [in_grid_crs.json]

        def rasterize(block_info: dict[Any, Any] | None = None) -> npt.NDArray[np.bool_]:
            assert block_info is not None
            (r0, r1), (c0, c1) = block_info[None]["array-location"]
            sub = self.geobox[r0:r1, c0:c1]
            with warnings.catch_warnings():
                # rasterio 1.4 warns while creating its scratch dataset, before the transform
                # given here is applied; the mask is georeferenced correctly.
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                inside = geometry_mask(
                    shapes, out_shape=(r1 - r0, c1 - c0), transform=sub.affine, invert=True
                )
            return np.asarray(inside)

        inside: da.Array = da.map_blocks(
            rasterize, chunks=self.chunks, dtype=bool, meta=np.array((), dtype=bool)
        )
        return inside


def _split(n: int, size: int) -> tuple[int, ...]:
    full, rest = divmod(n, size)
    return (size,) * full + ((rest,) if rest else ())
