"""The target grid: one immutable CRS + affine + shape + chunking that every layer, site and
output is aligned to.

Pixel-is-area: pixel ``(row, col)`` covers ``[x0 + col·res, x0 + (col+1)·res)`` in x, with the
north-up affine of an odc-geo ``GeoBox``. A grid is given by its CRS and resolution with a
lon/lat ``bbox`` or an ``extent`` in its own CRS, or taken pixel for pixel from a template raster
(``like``); nothing defaults to a region. The paper's grid, :data:`PLATEAU_GRID`, is 1,000 m in
Asia North Albers Equal Area (ESRI:102025) over 79–105 °E × 27–40 °N, masked to the plateau.
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
import rasterio
from affine import Affine
from odc.geo.crs import CRS as OdcCRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box, polygon, unary_union
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.features import geometry_mask

from tpgrid.errors import ConfigError, GridError, describe_validation
from tpgrid.yamlfile import read_mapping, validated

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
    """What a pipeline says about its grid (YAML-friendly, validated, frozen).

    The extent is exactly one of ``bbox`` (lon/lat), ``extent`` (the grid's own CRS) or
    ``like`` (a template raster, which also gives CRS and resolution). Nothing defaults to a
    region: the plateau's grid (:data:`PLATEAU_GRID`) names its settings like any other.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    crs: str | None = Field(None, description="EPSG/ESRI code or WKT; not with 'like'")
    resolution: float | None = Field(
        None, gt=0, description="pixel size in CRS units (m or °); not with 'like'"
    )
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="lon_min, lat_min, lon_max, lat_max in EPSG:4326"
    )
    extent: tuple[float, float, float, float] | None = Field(
        None, description="x_min, y_min, x_max, y_max in the grid's CRS"
    )
    like: str | None = Field(
        None, description="template raster (path or URL): CRS, resolution, extent, alignment"
    )
    chunk: int = Field(512, ge=16, le=8192, description="chunk edge in pixels")
    mask: str | None = Field(
        None,
        description="none: every pixel; 'plateau': the built-in outline; or a GeoJSON path",
    )

    @field_validator("crs")
    @classmethod
    def _crs_is_known(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                CRS.from_user_input(value)
            except CRSError as exc:
                raise ValueError(f"unknown CRS {value!r}: use an EPSG/ESRI code or WKT") from exc
        return value

    @field_validator("bbox")
    @classmethod
    def _bbox_is_ordered(
        cls, value: tuple[float, float, float, float] | None
    ) -> tuple[float, float, float, float] | None:
        if value is None:
            return value
        lon_min, lat_min, lon_max, lat_max = value
        if not (-180 <= lon_min < lon_max <= 180 and -90 <= lat_min < lat_max <= 90):
            raise ValueError(
                "bbox must be lon_min < lon_max within ±180, lat_min < lat_max within ±90"
            )
        return value

    @field_validator("extent")
    @classmethod
    def _extent_is_ordered(
        cls, value: tuple[float, float, float, float] | None
    ) -> tuple[float, float, float, float] | None:
        if value is not None and not (value[0] < value[2] and value[1] < value[3]):
            raise ValueError("extent must be x_min, y_min, x_max, y_max with min < max")
        return value

    @field_validator("mask")
    @classmethod
    def _mask_is_not_the_old_bbox(cls, value: str | None) -> str | None:
        if value == "bbox":
            raise ValueError(
                "mask 'bbox' is no longer a value: leave 'mask' out to keep every pixel of the grid"
            )
        return value

    @model_validator(mode="after")
    def _extent_is_given_once(self) -> GridSpec:
        given = [key for key in ("bbox", "extent", "like") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'bbox' (lon/lat), 'extent' (in the grid's CRS) or 'like' "
                f"(a template raster); got {given or 'none'}"
            )
        if self.like is not None:
            clash = [key for key in ("crs", "resolution") if getattr(self, key) is not None]
            if clash:
                raise ValueError(
                    f"'like' takes CRS and resolution from the template raster: remove {clash}"
                )
            return self
        missing = [key for key in ("crs", "resolution") if getattr(self, key) is None]
        if missing:
            raise ValueError(
                f"set {missing} in the grid (e.g. crs: EPSG:3035, resolution: 100), or "
                "'like: <template raster>' to take them from a raster"
            )
        return self

    @model_serializer(mode="wrap")
    def _given_keys_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Records hold the keys a grid was given, so a record written before 'extent' and
        # 'like' existed still equals the record of the same grid today.
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None or k == "mask"}

    def resolved_against(self, base_dir: Path) -> GridSpec:
        """This spec with its relative paths (``like``, a ``mask`` file) made absolute from
        ``base_dir``, the folder of the YAML it was written in."""
        update: dict[str, str] = {}
        if self.like is not None and not _is_url(self.like):
            update["like"] = str((base_dir / self.like).resolve())
        if self.mask not in (None, PLATEAU_MASK):
            update["mask"] = str((base_dir / str(self.mask)).resolve())
        return self.model_copy(update=update)


PLATEAU_MASK = "plateau"

#: The paper's product grid: 1 km in Asia North Albers Equal Area over 79–105 °E × 27–40 °N
#: (edges snapped to whole kilometres), masked to the plateau outline.
PLATEAU_GRID = GridSpec(crs="ESRI:102025", resolution=1000.0, bbox=PLATEAU_BBOX, mask=PLATEAU_MASK)


def load_grid_spec(path: str | Path) -> GridSpec:
    """Read a grid spec from YAML, naming the file in any error; relative ``like`` and
    ``mask`` paths are read from the YAML's folder and returned absolute."""
    data = read_mapping(path, "grid file", "pass the path of a grid YAML")
    spec = validated(GridSpec.model_validate, data, f"grid file {path}")
    return spec.resolved_against(Path(path).parent)


def _is_url(location: str) -> bool:
    """A location GDAL reads remotely (``https://``, ``s3://``, ``/vsicurl/``...)."""
    return "://" in location or location.startswith("/vsi")


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
    def from_spec(cls, spec: GridSpec) -> TargetGrid:
        """The grid ``spec`` describes. A ``like`` spec is resolved: the grid's ``spec`` is then
        the template's CRS, resolution and exact extent, so records of the grid hold the grid
        itself, not a path that may change or move."""
        if spec.like is not None:
            spec = _spec_like(spec.like, spec)
        # GridSpec checked that a spec without 'like' has both.
        assert spec.crs is not None
        assert spec.resolution is not None
        if spec.extent is not None:
            geobox = _extent_geobox(spec.extent, spec.crs, spec.resolution)
        else:
            assert spec.bbox is not None
            # Densify the lon/lat box edges before projecting: in a conic projection the
            # parallels curve, so the corners alone would cut off the southern rim.
            footprint = box(*spec.bbox, "EPSG:4326").to_crs(spec.crs, resolution=0.01)
            geobox = GeoBox.from_bbox(footprint.boundingbox, spec.crs, resolution=spec.resolution)
        if geobox.width * geobox.height == 0:
            unit = CRS.from_user_input(spec.crs).axis_info[0].unit_name
            raise GridError(
                f"grid {spec.bbox or spec.extent} at {spec.resolution} {unit} has no pixel: "
                "widen 'bbox'/'extent' or lower 'resolution' in the grid YAML"
            )
        return cls(spec=spec, geobox=geobox)

    @classmethod
    def from_record(cls, record: Any, source: str) -> TargetGrid:
        """The grid a record (cube attributes, run record) stored; a record this version no
        longer reads (e.g. the dropped ``mask: bbox``) is a :class:`GridError` naming ``source``."""
        try:
            spec = GridSpec.model_validate(record)
        except ValidationError as exc:
            raise GridError(
                f"{source} records a grid this tpgrid no longer reads ({describe_validation(exc)}"
                "): rebuild it (e.g. `tpgrid cube ... --overwrite`) with the grid YAML as it is now"
            ) from exc
        return cls.from_spec(spec)

    def describe(self) -> str:
        """The grid in a few words, for messages: CRS, resolution, extent, and lon/lat bounds."""
        west, south, east, north = self.lonlat_bounds()
        x0, y0, x1, y1 = self.geobox.extent.boundingbox
        # A template's CRS without an authority code is WKT: its name is enough here.
        crs = self.spec.crs if len(str(self.spec.crs)) <= 40 else CRS(self.crs_wkt).name
        return (
            f"{crs} at {self.spec.resolution:g}, x {x0:.10g}..{x1:.10g}, "
            f"y {y0:.10g}..{y1:.10g} (lon {west:.4f}..{east:.4f}, lat {south:.4f}..{north:.4f})"
        )

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """lon_min, lat_min, lon_max, lat_max (EPSG:4326) of the grid's whole footprint."""
        return tuple(self.geobox.geographic_extent.boundingbox)  # type: ignore[return-value]

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

    def pixel_index_xy(
        self, x: npt.ArrayLike, y: npt.ArrayLike, crs: str
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Row and column of the pixel containing each point ``(x, y)`` given in ``crs``.

        Returns ``(row, col, inside)``; outside points get row = col = -1. A point on a pixel's
        west/north edge belongs to that pixel (half-open intervals, pixel-is-area); points in
        the grid's own CRS are used as they are, so a point exactly on an edge stays there.
        """
        x_arr = np.asarray(x, dtype="float64")
        y_arr = np.asarray(y, dtype="float64")
        if CRS.from_user_input(crs) != CRS.from_wkt(self.crs_wkt):
            to_grid = Transformer.from_crs(crs, self.crs_wkt, always_xy=True)
            x_arr, y_arr = (np.asarray(v, dtype="float64") for v in to_grid.transform(x_arr, y_arr))
        # Straight division, not the inverse affine: (x - x0) / res is exact on a pixel edge,
        # while multiplying by 1/res can land a hair short of it.
        affine = self.geobox.affine
        col_f = (x_arr - affine.c) / affine.a
        row_f = (y_arr - affine.f) / affine.e
        with np.errstate(invalid="ignore"):
            row = np.floor(row_f)
            col = np.floor(col_f)
        rows, cols = self.shape
        inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
        return (
            np.where(inside, row, -1).astype("int64"),
            np.where(inside, col, -1).astype("int64"),
            inside,
        )

    def pixel_index(
        self, lon: npt.ArrayLike, lat: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """:meth:`pixel_index_xy` for lon/lat points (EPSG:4326)."""
        return self.pixel_index_xy(lon, lat, "EPSG:4326")

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
        """The area of interest, or None when every pixel counts."""
        if self.spec.mask is None:
            return None
        if self.spec.mask == PLATEAU_MASK:
            return polygon(list(PLATEAU_OUTLINE), "EPSG:4326")
        return _read_mask(Path(self.spec.mask))

    def check_mask(self) -> None:
        """Raise :class:`GridError` when the mask does not overlap the grid at all: from the
        geometry alone, before anything is read or a cluster started."""
        geometry = self.mask_geometry()
        if geometry is None:
            return
        # Compared in lon/lat when the mask is (GeoJSON's CRS): the grid's footprint projects
        # there everywhere, while a mask far from a projected grid's zone may not project.
        if geometry.crs == "EPSG:4326":
            footprint = self.geobox.geographic_extent
        else:
            footprint = self.geobox.extent
            geometry = geometry.to_crs(self.crs, resolution=abs(self.geobox.resolution.x))
        if geometry.intersects(footprint):
            return
        raise GridError(
            f"mask {self.spec.mask!r} does not overlap the grid ({self.describe()}), so the cube "
            "would have no valid pixel: set 'mask' in the grid YAML to a GeoJSON polygon of your "
            "area, or leave 'mask' out to keep every pixel of the grid"
        )

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


def _spec_like(template: str, spec: GridSpec) -> GridSpec:
    """``spec`` with its template raster's CRS, resolution and exact extent instead of
    ``like``: the grid is the template's pixel for pixel."""
    try:
        with rasterio.open(template) as raster:
            transform, crs, width, height = (
                raster.transform,
                raster.crs,
                raster.width,
                raster.height,
            )
    except RasterioIOError as exc:
        raise GridError(
            f"grid template {template} (grid key 'like') cannot be read ({exc}): point 'like' at "
            "a raster GDAL can open"
        ) from exc
    if crs is None:
        raise GridError(f"grid template {template} has no CRS: assign one, or set crs/extent")
    if transform.b != 0 or transform.d != 0:
        raise GridError(
            f"grid template {template} is rotated (affine {tuple(transform)[:6]}): tpgrid grids "
            "are north-up; warp the template to a north-up raster, or give crs, resolution and "
            "extent"
        )
    res_x, res_y = abs(transform.a), abs(transform.e)
    if not math.isclose(res_x, res_y, rel_tol=1e-9):
        raise GridError(
            f"grid template {template} has {res_x:g} × {res_y:g} pixels: tpgrid grids have "
            "square pixels; resample the template, or give crs, resolution and extent"
        )
    xs = (transform.c, transform.c + width * transform.a)
    ys = (transform.f, transform.f + height * transform.e)
    return spec.model_copy(
        update={
            "like": None,
            "crs": crs.to_string(),
            "resolution": res_x,
            "extent": (min(xs), min(ys), max(xs), max(ys)),
        }
    )


def _extent_geobox(
    extent: tuple[float, float, float, float], crs: str, resolution: float
) -> GeoBox:
    """The north-up grid over ``extent``: used exactly when it spans whole pixels, else with
    its edges moved outward to multiples of ``resolution``."""
    x0, y0, x1, y1 = extent
    width, height = (x1 - x0) / resolution, (y1 - y0) / resolution
    if _whole(width) and _whole(height):
        shape = (round(height), round(width))
        return GeoBox(shape, Affine(resolution, 0, x0, 0, -resolution, y1), crs)
    x0, y0 = math.floor(x0 / resolution) * resolution, math.floor(y0 / resolution) * resolution
    x1, y1 = math.ceil(x1 / resolution) * resolution, math.ceil(y1 / resolution) * resolution
    shape = (round((y1 - y0) / resolution), round((x1 - x0) / resolution))
    return GeoBox(shape, Affine(resolution, 0, x0, 0, -resolution, y1), crs)


def _whole(pixels: float) -> bool:
    # A width meant to be whole pixels may carry float noise from the template's bounds.
    return abs(pixels - round(pixels)) < 1e-6


def _read_mask(path: Path) -> Geometry:
    """The polygon(s) of a GeoJSON file (a FeatureCollection, a Feature or a bare geometry),
    in EPSG:4326 as RFC 7946 says, or in the CRS a legacy ``crs`` member names."""
    if not path.is_file():
        raise ConfigError(
            f"grid mask {path} does not exist: set 'mask' in the grid YAML to a GeoJSON polygon "
            "file (relative to the YAML), 'plateau', or leave it out to keep every pixel"
        )
    try:
        doc = json.loads(path.read_text())
        features = doc["features"] if doc.get("type") == "FeatureCollection" else [doc]
        geometries = [f["geometry"] if f.get("type") == "Feature" else f for f in features]
        crs = doc.get("crs", {}).get("properties", {}).get("name", "EPSG:4326")
        shapes = [Geometry(g, crs) for g in geometries if g is not None]
    except (ValueError, KeyError, AttributeError, TypeError, CRSError) as exc:
        raise ConfigError(
            f"grid mask {path} is not a GeoJSON polygon file ({exc!r}): export the area of "
            "interest as GeoJSON (EPSG:4326)"
        ) from exc
    merged = unary_union(shapes)
    if merged is None:
        raise ConfigError(f"grid mask {path} holds no geometry: it needs at least one polygon")
    return merged


def _split(n: int, size: int) -> tuple[int, ...]:
    full, rest = divmod(n, size)
    return (size,) * full + ((rest,) if rest else ())
