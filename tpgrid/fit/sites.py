"""The site table: read and check it, and place its sites on the cube's grid.

A site table has one row per sample: ``site_id, sample_id``, two coordinate columns in the
table's CRS (``lon, lat`` in EPSG:4326 unless its :class:`SiteSource` says otherwise), one column
per element in mg/kg (blank = not measured; an element's column is named by its symbol) and
optional ``<element>_icpms`` columns for the re-measured calibration subset. Other columns are
kept and ignored.

Every problem a user can fix is a :class:`SiteTableError` naming the file, column and rows;
sites that cannot be used (outside the grid, on an invalid pixel) are logged and counted,
never dropped silently.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr
from pydantic import BaseModel, ConfigDict, field_validator
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from tpgrid.cube import VALID
from tpgrid.errors import SiteTableError
from tpgrid.fit.elements import element_columns, resolve_elements
from tpgrid.grid import TargetGrid

log = logging.getLogger(__name__)

#: The paper's seven micronutrients (mg/kg).
ELEMENTS = ("Fe", "Mn", "Cu", "Zn", "Ni", "V", "Mo")
ID_COLUMNS = ("site_id", "sample_id")
LONLAT = "EPSG:4326"
ICPMS_SUFFIX = "_icpms"
#: Samples of one site lie metres apart (a 15 m transect); farther than a 1 km pixel from their
#: site's centre means a mislabelled site_id or a typo in the coordinates.
MAX_SITE_SPREAD_M = 1000.0
_METRES_PER_DEGREE = 111_195.0
_SHOWN = 5  # offending values quoted in an error message


class SiteSource(BaseModel):
    """Where a site table is and how its locations are given: the CRS of its coordinates and
    the names of its x (easting, or lon) and y (northing, or lat) columns. Without ``x``/``y``
    the columns are ``lon``/``lat`` when the table has them and the CRS is geographic, else
    ``x``/``y``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    crs: str = LONLAT
    x: str | None = None
    y: str | None = None

    @field_validator("crs")
    @classmethod
    def _crs_is_known(cls, value: str) -> str:
        try:
            CRS.from_user_input(value)
        except CRSError as exc:
            raise ValueError(f"unknown CRS {value!r}: use an EPSG code (e.g. EPSG:32633)") from exc
        return value

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SiteSource:
        """The table a model record's ``sites`` entry names (records before ``crs``, ``x`` and
        ``y`` were kept are lon/lat tables)."""
        return cls(
            path=Path(record["path"]),
            crs=record.get("crs", LONLAT),
            x=record.get("x"),
            y=record.get("y"),
        )

    def coordinate_columns(self, columns: Sequence[object]) -> tuple[str, str]:
        """The (x, y) column names of a table with ``columns``."""
        if self.x is not None and self.y is not None:
            return self.x, self.y
        geographic = CRS.from_user_input(self.crs).is_geographic
        default = ("lon", "lat") if geographic and {"lon", "lat"} <= set(columns) else ("x", "y")
        return self.x or default[0], self.y or default[1]


@dataclass(frozen=True, eq=False)
class SiteTable:
    """A validated site table: ids as strings, coordinates and element columns as float64.

    The frame has ``x``, ``y`` (the table's coordinates, in ``crs``) and ``lon``, ``lat``
    (EPSG:4326, derived from them: for records, reports and spatial blocks), whatever the
    table's coordinate columns were called. ``elements`` are the element columns checked;
    ``coordinates`` the table's own (x, y) column names; ``sha256`` the hash of the file's
    bytes, for the model record.
    """

    path: Path
    frame: pd.DataFrame
    sha256: str
    crs: str = LONLAT
    elements: tuple[str, ...] = ()
    coordinates: tuple[str, str] = ("lon", "lat")

    @property
    def source(self) -> SiteSource:
        """How to read this table again (for records, and the report reading it back)."""
        x, y = self.coordinates
        return SiteSource(path=self.path, crs=self.crs, x=x, y=y)


def read_sites(source: SiteSource | str | Path, elements: Sequence[str] | None = None) -> SiteTable:
    """Read a CSV or Parquet site table and validate it for ``elements`` (None: every element
    column of the table, :func:`~tpgrid.fit.elements.element_columns`). A bare path is a table
    with ``lon``/``lat`` columns in EPSG:4326.

    Raises :class:`SiteTableError` for a missing file, missing columns, empty or repeated ids,
    text in numeric columns, negative concentrations, coordinates that are not valid in the
    table's CRS (for a geographic CRS: out of range, or lon/lat swapped), and samples of one
    site that lie more than :data:`MAX_SITE_SPREAD_M` from their site's centre.
    """
    if not isinstance(source, SiteSource):
        source = SiteSource(path=Path(source))
    path = source.path
    frame = _read_frame(path)
    x_column, y_column = source.coordinate_columns(list(frame.columns))
    required = [*ID_COLUMNS, x_column, y_column]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SiteTableError(
            f"{path} has no column(s) {missing} (found {list(frame.columns)}): a site table "
            f"needs {required}, one row per sample; name other coordinate columns with "
            "'x' and 'y' (and their CRS with 'crs') under 'sites' in the pipeline YAML "
            "(tpgrid fit/report: --sites-crs)"
        )
    elements = resolve_elements(elements, element_columns(frame.columns), path)
    if frame.empty:
        raise SiteTableError(f"{path} has no rows: it must hold one row per sample")
    frame = frame.copy()
    for column in ("site_id", "sample_id"):
        frame[column] = _ids(path, frame[column], column)
    _check_unique_samples(path, frame)
    for column, as_column in ((x_column, "x"), (y_column, "y")):
        values = _numeric(path, frame, column)
        if values.isna().any():
            rows = _rows(frame, values.isna())
            raise SiteTableError(
                f"{path}: column {column!r} is blank at {rows}: every sample needs a location"
            )
        frame[as_column] = values
    frame["lon"], frame["lat"] = _lonlat(path, frame, source.crs, (x_column, y_column))
    for element in elements:
        frame[element] = _concentration(path, frame, element)
        icpms = element + ICPMS_SUFFIX
        if icpms in frame.columns:
            frame[icpms] = _concentration(path, frame, icpms)
    _check_site_spread(path, frame)
    return SiteTable(
        path=path,
        frame=frame,
        sha256=_file_sha256(path),
        crs=source.crs,
        elements=tuple(elements),
        coordinates=(x_column, y_column),
    )


def _read_frame(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SiteTableError(f"site table {path} does not exist: pass the path of a CSV or Parquet")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            # Ids as text, so "007" stays "007" and numeric ids compare like any other.
            return pd.read_csv(path, dtype={"site_id": str, "sample_id": str})
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SiteTableError(f"{path} is not a readable CSV ({exc}): fix or re-export it") from exc
    except (OSError, ValueError) as exc:
        raise SiteTableError(f"{path} cannot be read ({exc}): fix or re-export it") from exc
    raise SiteTableError(
        f"site table {path} has suffix {path.suffix!r}: use a .csv or .parquet file"
    )


def _rows(frame: pd.DataFrame, bad: pd.Series[bool] | npt.NDArray[np.bool_]) -> str:
    """The first offending data rows (1-based) with their sample ids, for messages."""
    positions = np.flatnonzero(np.asarray(bad))
    ids = frame["sample_id"].to_numpy()
    shown = ", ".join(f"row {i + 1} ({ids[i]})" for i in positions[:_SHOWN])
    more = f" and {positions.size - _SHOWN} more" if positions.size > _SHOWN else ""
    return shown + more


def _ids(path: Path, column: pd.Series[Any], name: str) -> pd.Series[str]:
    text = column.astype("string").str.strip()
    blank = text.isna() | (text == "")
    if blank.any():
        rows = ", ".join(str(i + 1) for i in np.flatnonzero(blank.to_numpy())[:_SHOWN])
        raise SiteTableError(f"{path}: column {name!r} is blank at data row(s) {rows}: fill it in")
    return text.astype(str)


def _check_unique_samples(path: Path, frame: pd.DataFrame) -> None:
    repeated = frame["sample_id"][frame["sample_id"].duplicated(keep=False)]
    if not repeated.empty:
        names = sorted(set(repeated))
        raise SiteTableError(
            f"{path}: sample_id {names[:_SHOWN]} appear(s) more than once "
            f"({repeated.size} rows): every sample needs its own id"
        )


def _numeric(path: Path, frame: pd.DataFrame, column: str) -> pd.Series[float]:
    """The column as float64; text that is not a number is an error naming the rows."""
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    text = values.isna() & raw.notna() & (raw.astype("string").str.strip() != "")
    if text.any():
        quoted = ", ".join(
            f"{raw.iloc[i]!r} at row {i + 1}" for i in np.flatnonzero(text.to_numpy())[:_SHOWN]
        )
        raise SiteTableError(
            f"{path}: column {column!r} holds text where numbers belong ({quoted}): use a "
            "point as decimal separator, no units, and leave missing values blank"
        )
    if np.isinf(values).any():
        raise SiteTableError(
            f"{path}: column {column!r} holds infinite values at "
            f"{_rows(frame, np.isinf(values))}: fix them or leave them blank"
        )
    return values


def _concentration(path: Path, frame: pd.DataFrame, column: str) -> pd.Series[float]:
    values = _numeric(path, frame, column)
    negative = values < 0
    if negative.any():
        first = values[negative].iloc[0]
        raise SiteTableError(
            f"{path}: column {column!r} has {int(negative.sum())} negative value(s) (e.g. "
            f"{first:g} at {_rows(frame, negative)}): concentrations are mg/kg ≥ 0; leave "
            "missing values blank rather than writing a code like -9999"
        )
    return values


def _lonlat(
    path: Path, frame: pd.DataFrame, crs: str, columns: tuple[str, str]
) -> tuple[pd.Series[float], pd.Series[float]]:
    """Lon/lat (EPSG:4326) of every sample, from its x/y in ``crs``; coordinates that are not
    valid there are an error naming the rows (and, in lon/lat, whether they look swapped)."""
    x, y = frame["x"], frame["y"]
    geographic = CRS.from_user_input(crs).is_geographic
    if geographic:
        _check_degrees(path, frame, columns)
    lon, lat = Transformer.from_crs(crs, LONLAT, always_xy=True).transform(
        x.to_numpy(), y.to_numpy()
    )
    lon, lat = np.asarray(lon, dtype="float64"), np.asarray(lat, dtype="float64")
    bad = ~(np.isfinite(lon) & np.isfinite(lat)) | (np.abs(lon) > 180) | (np.abs(lat) > 90)
    if bad.any():
        hint = (
            _DEGREES_HINT
            if not geographic and _look_like_degrees(frame)
            else f"check that {list(columns)} are coordinates in {crs}, or set the table's CRS "
            "with 'crs' under 'sites' in the pipeline YAML"
        )
        raise SiteTableError(
            f"{path}: {int(bad.sum())} sample(s) have coordinates that are not valid in {crs} "
            f"({_rows(frame, bad)}): {hint}"
        )
    return pd.Series(lon, index=frame.index), pd.Series(lat, index=frame.index)


_DEGREES_HINT = (
    "they look like lon/lat degrees: set 'crs: EPSG:4326' under 'sites' in the pipeline YAML"
)


def _look_like_degrees(frame: pd.DataFrame) -> bool:
    return bool(((frame["x"].abs() <= 180) & (frame["y"].abs() <= 90)).all())


def _check_degrees(path: Path, frame: pd.DataFrame, columns: tuple[str, str]) -> None:
    lon, lat = frame["x"], frame["y"]
    bad = (lon.abs() > 180) | (lat.abs() > 90)
    if not bad.any():
        return
    swapped = (lat[bad].abs() <= 180).all() and (lon[bad].abs() <= 90).all()
    hint = (
        f"the columns look swapped: {columns[0]!r} is the east-west coordinate (-180..180), "
        f"{columns[1]!r} the north-south one (-90..90)"
        if swapped
        else "lon/lat must be degrees (lon -180..180, lat -90..90); for projected metres set "
        "the table's CRS with 'crs' under 'sites' in the pipeline YAML (e.g. crs: EPSG:32633)"
    )
    raise SiteTableError(
        f"{path}: {int(bad.sum())} sample(s) have {list(columns)} out of range "
        f"({_rows(frame, bad)}): " + hint
    )


def _check_site_spread(path: Path, frame: pd.DataFrame) -> None:
    centre = frame.groupby("site_id")[["lon", "lat"]].transform("mean")
    dy = (frame["lat"] - centre["lat"]) * _METRES_PER_DEGREE
    dx = (frame["lon"] - centre["lon"]) * _METRES_PER_DEGREE * np.cos(np.radians(centre["lat"]))
    far = np.hypot(dx, dy) > MAX_SITE_SPREAD_M
    if far.any():
        sites = sorted(set(frame.loc[far, "site_id"]))
        raise SiteTableError(
            f"{path}: the samples of site(s) {sites[:_SHOWN]} lie more than "
            f"{MAX_SITE_SPREAD_M:g} m from their site's centre: check their site_id and "
            "coordinates (samples of one site share one pixel)"
        )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- placing sites on the cube -------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SiteLocations:
    """The usable sites: one row per site (index ``site_id``, sorted) with the centre of its
    samples (``lon``, ``lat``) and its pixel (``row``, ``col``); and the sites left out, by
    reason (``outside_grid``, ``invalid_pixel``)."""

    frame: pd.DataFrame
    excluded: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def n_excluded(self) -> int:
        return sum(len(ids) for ids in self.excluded.values())


def locate_sites(table: SiteTable, grid: TargetGrid, cube: xr.Dataset) -> SiteLocations:
    """Put every site on its pixel; exclude (log and count) sites outside the grid or on a pixel
    the cube marks invalid (outside the area of interest, or a covariate missing).

    A site's pixel is that of the centre of its samples, so its triplicates share one set of
    covariates even when the transect crosses a pixel edge. The centre goes from the table's
    CRS straight to the grid's (no lon/lat round trip), so a site on a pixel edge stays there.
    Raises :class:`SiteTableError` when no site is usable.
    """
    centres = table.frame.groupby("site_id", sort=True)[["x", "y", "lon", "lat"]].mean()
    row, col, inside = grid.pixel_index_xy(
        centres["x"].to_numpy(), centres["y"].to_numpy(), table.crs
    )
    valid = np.zeros(inside.shape, dtype=bool)
    if inside.any():
        flags = extract_covariates(cube, row[inside], col[inside], [VALID])[VALID]
        valid[inside] = flags == 1
    site_ids = centres.index.to_numpy()
    excluded = {
        reason: tuple(str(s) for s in site_ids[mask])
        for reason, mask in (("outside_grid", ~inside), ("invalid_pixel", inside & ~valid))
        if mask.any()
    }
    for reason, ids in excluded.items():
        log.warning(
            "%s: %d of %d sites not used (%s): %s%s",
            table.path,
            len(ids),
            len(site_ids),
            reason.replace("_", " "),
            ", ".join(ids[:_SHOWN]),
            " …" if len(ids) > _SHOWN else "",
        )
    if not valid.any():
        raise SiteTableError(_nowhere_message(table, grid, centres))
    frame = centres[["lon", "lat"]].assign(row=row, col=col)[valid]
    return SiteLocations(frame=frame, excluded=excluded)


def _nowhere_message(table: SiteTable, grid: TargetGrid, centres: pd.DataFrame) -> str:
    message = (
        f"{table.path}: none of the {len(centres)} sites lies on a valid pixel of the cube's "
        f"grid ({grid.describe()})"
    )
    if CRS.from_user_input(table.crs).is_geographic:
        _, _, swapped = grid.pixel_index_xy(
            centres["y"].to_numpy(), centres["x"].to_numpy(), table.crs
        )
        if swapped.mean() > 0.5:
            return message + ": lon and lat look swapped; lon is the east-west coordinate"
    elif _look_like_degrees(table.frame):
        return message + f": the coordinates are read in {table.crs}, but " + _DEGREES_HINT
    return message + (
        f": check that the sites' coordinates are in {table.crs} (set 'crs' under 'sites' in "
        "the pipeline YAML), and that the grid's mask and covariates cover the sites"
    )


def extract_covariates(
    cube: xr.Dataset,
    rows: npt.ArrayLike,
    cols: npt.ArrayLike,
    variables: Sequence[str],
) -> dict[str, npt.NDArray[Any]]:
    """Values of ``variables`` at the pixels ``(rows[i], cols[i])``, one array per variable.

    Point-wise (vectorised) indexing of the lazy cube: only the chunks holding a site are read.
    It runs in this thread, not on the cluster: the training table is built where the model is
    fitted, and reading a few hundred points costs less than handing hundreds of tiny tasks
    to threads (half the time on the small demo).
    """
    at = {
        "y": xr.DataArray(np.asarray(rows, dtype=np.int64), dims="site"),
        "x": xr.DataArray(np.asarray(cols, dtype=np.int64), dims="site"),
    }
    points = cube[list(variables)].isel(at).compute(scheduler="synchronous")
    return {name: np.asarray(points[name].values) for name in variables}
