"""The covariate catalog: what each layer is, where it lives and how it is opened.

A catalog is a YAML file::

    layers:
      dem:   {path: dem_30s.tif, kind: continuous, group: topography, units: m,
              valid_range: [-500, 9000]}
      vegetation:
        path: vegetation.tif
        kind: categorical
        group: land_cover
        classes: {1: forest, 2: shrub}
    terrain: {dem: dem}        # derive slope, northness, eastness from this layer

A layer's ``group`` is a free name (``hydrology``, ``geology``, …; default ``other``): the
report sums the predictors' importance per group.

Relative paths are relative to the catalog file; ``http(s)://``, ``s3://``, ``gs://`` and GDAL
``/vsi…/`` paths are opened through GDAL's virtual file systems. Opening is lazy and chunked.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import odc.geo.xr  # noqa: F401  (registers the .odc accessor used on opened layers)
import rasterio
import rioxarray
import xarray as xr
from odc.geo.geobox import GeoBox
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from rasterio.errors import RasterioIOError

from tpgrid.errors import SourceError
from tpgrid.grid import TargetGrid
from tpgrid.yamlfile import read_mapping, validated

Kind = Literal["continuous", "categorical"]
_GROUP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")


def _group_name(name: str) -> str:
    # The name labels report tables and figures, so it is kept to a short word.
    if not _GROUP_NAME.fullmatch(name):
        raise ValueError(
            f"group {name!r} must be a name of up to 40 letters, digits and _ that starts "
            "with a letter, e.g. hydrology or land_cover"
        )
    return name


#: A predictor group: any short identifier-like name; the report sums importance per group.
Group = Annotated[str, AfterValidator(_group_name)]
Resampling = Literal[
    "auto", "nearest", "bilinear", "cubic", "average", "mode", "min", "max", "med", "sum"
]
CATEGORICAL_NODATA = 255
_REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "az://", "/vsi")
_GDAL_SCHEMES = {"s3://": "/vsis3/", "gs://": "/vsigs/", "az://": "/vsiaz/"}


class Layer(BaseModel):
    """One covariate source, as declared in the catalog."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    kind: Kind
    group: Group = Field("other", description="predictor group the report sums importance by")
    units: str = ""
    description: str = ""
    band: int = Field(1, ge=1)
    resampling: Resampling = "auto"
    nodata: float | None = Field(None, description="overrides the file's nodata value")
    valid_range: tuple[float, float] | None = None
    classes: dict[int, str] | None = Field(None, description="code → name, categorical only")

    @model_validator(mode="after")
    def _kind_matches_fields(self) -> Layer:
        if self.kind == "categorical":
            if not self.classes:
                raise ValueError("a categorical layer needs a 'classes' table {code: name}")
            bad = [code for code in self.classes if not 0 <= code < CATEGORICAL_NODATA]
            if bad:
                raise ValueError(f"class codes must be 0..254 (255 is nodata), got {bad}")
            if self.resampling not in ("auto", "mode", "nearest"):
                raise ValueError(
                    "a categorical layer can only be resampled with 'mode' or 'nearest'"
                )
            if self.valid_range is not None:
                raise ValueError("a categorical layer takes 'classes', not 'valid_range'")
        elif self.classes is not None:
            raise ValueError("'classes' is only for kind: categorical")
        if self.valid_range is not None and not self.valid_range[0] <= self.valid_range[1]:
            raise ValueError("valid_range must be [low, high] with low <= high")
        return self


class TerrainSpec(BaseModel):
    """Which layer is the DEM that slope and aspect are derived from, on the target grid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dem: str


class Catalog(BaseModel):
    """All covariate layers of a pipeline. ``base_dir`` anchors relative paths."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layers: dict[str, Layer]
    terrain: TerrainSpec | None = None
    base_dir: Path = Field(Path("."), exclude=True)

    @model_validator(mode="after")
    def _names_are_usable(self) -> Catalog:
        if not self.layers:
            raise ValueError("a catalog needs at least one layer under 'layers'")
        for name in self.layers:
            if not name.isidentifier():
                raise ValueError(f"layer name {name!r} must be a Python identifier (a-z, 0-9, _)")
        if self.terrain is not None:
            dem = self.layers.get(self.terrain.dem)
            if dem is None:
                raise ValueError(f"terrain.dem names {self.terrain.dem!r}, which is not a layer")
            if dem.kind != "continuous":
                raise ValueError(f"terrain.dem layer {self.terrain.dem!r} must be continuous")
        return self

    def location(self, name: str) -> str:
        """Where GDAL should read layer ``name`` from: an absolute path or a VSI path/URL."""
        path = self.layers[name].path
        for scheme, vsi in _GDAL_SCHEMES.items():
            if path.startswith(scheme):
                return vsi + path[len(scheme) :]
        if path.startswith(_REMOTE_PREFIXES):
            return path
        return str((self.base_dir / path).resolve())


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog YAML; every mistake names the file and the key."""
    path = Path(path)
    data = read_mapping(path, "catalog", "pass the path of a catalog YAML")
    return validated(
        Catalog.model_validate, {**data, "base_dir": path.parent.resolve()}, f"catalog {path}"
    )


def open_layer(catalog: Catalog, name: str, chunk: int = 1024) -> xr.DataArray:
    """Open layer ``name`` lazily as a 2-D ``(y, x)`` DataArray in its native CRS and grid.

    Raises :class:`SourceError` naming the layer when the file is missing or unreadable, has
    no CRS, or lacks the requested band. Nodata is taken from the catalog, else the file.
    """
    layer = catalog.layers[name]
    location = catalog.location(name)
    if not location.startswith(_REMOTE_PREFIXES) and not Path(location).is_file():
        raise SourceError(
            f"layer {name!r}: file {location} does not exist; fix 'path' in the catalog "
            f"(relative paths are read from {catalog.base_dir})"
        )
    try:
        opened = rioxarray.open_rasterio(location, chunks={"x": chunk, "y": chunk}, lock=False)
    except (RasterioIOError, OSError) as exc:
        raise SourceError(f"layer {name!r}: GDAL cannot read {location}: {exc}") from exc
    assert isinstance(opened, xr.DataArray)
    if opened.rio.crs is None:
        raise SourceError(
            f"layer {name!r}: {location} has no CRS; "
            "assign one (e.g. gdal_edit.py -a_srs EPSG:4326)"
        )
    if layer.band > opened.sizes["band"]:
        raise SourceError(
            f"layer {name!r}: {location} has {opened.sizes['band']} band(s), "
            f"catalog asks for band {layer.band}"
        )
    data = opened.isel(band=layer.band - 1, drop=True)
    nodata = layer.nodata if layer.nodata is not None else opened.rio.nodata
    data.attrs = {"nodata": nodata, "layer": name}
    return data


def source_geobox(data: xr.DataArray) -> GeoBox:
    """The native GeoBox of an opened layer."""
    geobox = data.odc.geobox
    assert isinstance(geobox, GeoBox)
    return geobox


def check_overlap(name: str, data: xr.DataArray, grid: TargetGrid) -> None:
    """Raise :class:`SourceError` when a layer does not cover any of the grid."""
    src = source_geobox(data).geographic_extent
    target = grid.geobox.geographic_extent
    if not src.intersects(target):
        west, south, east, north = src.boundingbox
        raise SourceError(
            f"layer {name!r} covers lon {west:.2f}..{east:.2f}, lat {south:.2f}..{north:.2f}, "
            f"which does not overlap the grid ({grid.describe()}); point the catalog at the right "
            "file"
        )


def choose_resampling(layer: Layer, data: xr.DataArray, grid: TargetGrid) -> str:
    """The resampling to use: the catalog's, or for 'auto' mode (categorical), average when the
    source is finer than the grid (coarsening) and bilinear when it is coarser (refining)."""
    if layer.resampling != "auto":
        return layer.resampling
    if layer.kind == "categorical":
        return "mode"
    src_area = pixel_area_m2(source_geobox(data))
    grid_area = pixel_area_m2(grid.geobox)
    return "average" if src_area < grid_area else "bilinear"


def pixel_area_m2(geobox: GeoBox) -> float:
    """Mean pixel area in square metres, via the footprint in an equal-area CRS."""
    footprint = geobox.geographic_extent.to_crs("ESRI:54009")
    return float(footprint.area) / (geobox.width * geobox.height)


def fingerprint(catalog: Catalog, name: str) -> str:
    """A hash that changes when layer ``name``'s catalog entry or its local file content does.

    Remote sources are fingerprinted by their entry (URL included) and, when GDAL can tell,
    their size and modification time, since hashing a remote file means downloading it.
    """
    digest = hashlib.sha256(json.dumps(catalog.layers[name].model_dump(), sort_keys=True).encode())
    location = catalog.location(name)
    if location.startswith(_REMOTE_PREFIXES):
        digest.update(location.encode())
        try:
            with rasterio.open(location) as src:
                digest.update(json.dumps(src.tags(), sort_keys=True).encode())
        except RasterioIOError as exc:
            raise SourceError(f"layer {name!r}: GDAL cannot read {location}: {exc}") from exc
        return digest.hexdigest()
    path = Path(location)
    if not path.is_file():
        raise SourceError(
            f"layer {name!r}: file {location} does not exist; fix 'path' in the catalog"
        )
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cube_dtype(layer: Layer) -> np.dtype[np.generic]:
    """float32 with NaN nodata for continuous layers; uint8 with 255 nodata for categorical."""
    return np.dtype("uint8") if layer.kind == "categorical" else np.dtype("float32")


def cube_fill_value(layer: Layer) -> float:
    return float(CATEGORICAL_NODATA) if layer.kind == "categorical" else math.nan
