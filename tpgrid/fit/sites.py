"""The site table: read and check it, and place its sites on the cube's grid.

A site table has one row per sample: ``site_id, sample_id, lon, lat`` (EPSG:4326), one column
per element in mg/kg (blank = not measured) and optional ``<element>_icpms`` columns for the
re-measured calibration subset. Other columns are kept and ignored.

Every problem a user can fix is a :class:`SiteTableError` naming the file, column and rows;
sites that cannot be used (outside the grid, on an invalid pixel) are logged and counted,
never dropped silently.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr

from tpgrid.cube import VALID
from tpgrid.errors import SiteTableError
from tpgrid.grid import TargetGrid

log = logging.getLogger(__name__)

#: The paper's seven micronutrients (mg/kg).
ELEMENTS = ("Fe", "Mn", "Cu", "Zn", "Ni", "V", "Mo")
REQUIRED_COLUMNS = ("site_id", "sample_id", "lon", "lat")
ICPMS_SUFFIX = "_icpms"
#: Samples of one site lie metres apart (a 15 m transect); farther than a 1 km pixel from their
#: site's centre means a mislabelled site_id or a typo in the coordinates.
MAX_SITE_SPREAD_M = 1000.0
_METRES_PER_DEGREE = 111_195.0
_SHOWN = 5  # offending values quoted in an error message


@dataclass(frozen=True, eq=False)
class SiteTable:
    """A validated site table: ids as strings, lon/lat and element columns as float64.

    ``sha256`` is the hash of the file's bytes, for the model record.
    """

    path: Path
    frame: pd.DataFrame
    sha256: str


def read_sites(path: str | Path, elements: Sequence[str] = ELEMENTS) -> SiteTable:
    """Read a CSV or Parquet site table and validate it for ``elements``.

    Raises :class:`SiteTableError` for a missing file, missing columns, empty or repeated ids,
    text in numeric columns, negative concentrations, lon/lat out of range (or swapped), and
    samples of one site that lie more than :data:`MAX_SITE_SPREAD_M` from their site's centre.
    """
    path = Path(path)
    frame = _read_frame(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise SiteTableError(
            f"{path} has no column(s) {missing} (found {list(frame.columns)}): a site table "
            f"needs {list(REQUIRED_COLUMNS)}, one row per sample"
        )
    absent = [e for e in elements if e not in frame.columns]
    if absent:
        raise SiteTableError(
            f"{path} has no column for element(s) {absent}: add the column (mg/kg, blank where "
            "not measured) or fit only the elements the table has (--element)"
        )
    if frame.empty:
        raise SiteTableError(f"{path} has no rows: it must hold one row per sample")
    frame = frame.copy()
    for column in ("site_id", "sample_id"):
        frame[column] = _ids(path, frame[column], column)
    _check_unique_samples(path, frame)
    for column in ("lon", "lat"):
        frame[column] = _numeric(path, frame, column)
        if frame[column].isna().any():
            rows = _rows(frame, frame[column].isna())
            raise SiteTableError(
                f"{path}: column {column!r} is blank at {rows}: every sample needs a location"
            )
    _check_lonlat(path, frame)
    for element in elements:
        frame[element] = _concentration(path, frame, element)
        icpms = element + ICPMS_SUFFIX
        if icpms in frame.columns:
            frame[icpms] = _concentration(path, frame, icpms)
    _check_site_spread(path, frame)
    return SiteTable(path=path, frame=frame, sha256=_file_sha256(path))


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


def _check_lonlat(path: Path, frame: pd.DataFrame) -> None:
    lon, lat = frame["lon"], frame["lat"]
    bad = (lon.abs() > 180) | (lat.abs() > 90)
    if not bad.any():
        return
    swapped = (lat[bad].abs() <= 180).all() and (lon[bad].abs() <= 90).all()
    hint = (
        "the columns look swapped: lon is the east-west coordinate (-180..180), lat the "
        "north-south one (-90..90)"
        if swapped
        else "lon/lat must be EPSG:4326 degrees (lon -180..180, lat -90..90), not projected metres"
    )
    raise SiteTableError(
        f"{path}: {int(bad.sum())} sample(s) have lon/lat out of range ({_rows(frame, bad)}): "
        + hint
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
    covariates even when the transect crosses a pixel edge. Raises :class:`SiteTableError` when
    no site is usable.
    """
    centres = table.frame.groupby("site_id", sort=True)[["lon", "lat"]].mean()
    row, col, inside = grid.pixel_index(centres["lon"].to_numpy(), centres["lat"].to_numpy())
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
        raise SiteTableError(_nowhere_message(table.path, grid, centres, len(site_ids)))
    frame = centres.assign(row=row, col=col)[valid]
    return SiteLocations(frame=frame, excluded=excluded)


def _nowhere_message(path: Path, grid: TargetGrid, centres: pd.DataFrame, n: int) -> str:
    message = (
        f"{path}: none of the {n} sites lies on a valid pixel of the cube's grid (lon/lat bbox "
        f"{grid.spec.bbox})"
    )
    _, _, swapped = grid.pixel_index(centres["lat"].to_numpy(), centres["lon"].to_numpy())
    if swapped.mean() > 0.5:
        return message + ": lon and lat look swapped; lon is the east-west coordinate"
    return message + ": check that lon/lat are EPSG:4326 degrees and the cube covers the sites"


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
