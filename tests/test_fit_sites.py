"""The site table: validation, placement on the cube, covariates at the sites."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests.plateau_fixtures import cube_path, plateau  # noqa: F401  (fixtures)
from tpgrid.cube import cube_grid, open_cube
from tpgrid.errors import SiteTableError
from tpgrid.fit.sites import (
    SiteLocations,
    SiteTable,
    extract_covariates,
    locate_sites,
    read_sites,
)
from tpgrid.grid import TargetGrid
from tpgrid.synthetic import PlateauFiles


@pytest.fixture(scope="module")
def table(plateau: PlateauFiles) -> SiteTable:  # noqa: F811
    return read_sites(plateau.sites)


@pytest.fixture(scope="module")
def cube(cube_path: Path) -> xr.Dataset:  # noqa: F811
    return open_cube(cube_path)


@pytest.fixture(scope="module")
def grid(cube_path: Path) -> TargetGrid:  # noqa: F811
    return cube_grid(cube_path)


@pytest.fixture(scope="module")
def located(table: SiteTable, grid: TargetGrid, cube: xr.Dataset) -> SiteLocations:
    return locate_sites(table, grid, cube)


@pytest.fixture
def frame(table: SiteTable) -> pd.DataFrame:
    """A fresh copy of the plateau's site table, to break."""
    return pd.read_csv(table.path, dtype={"site_id": str, "sample_id": str})


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


# --- reading and validating ---------------------------------------------------------------


def test_csv_and_parquet_give_the_same_table(plateau: PlateauFiles) -> None:  # noqa: F811
    from_csv = read_sites(plateau.sites).frame
    from_parquet = read_sites(plateau.sites_parquet).frame
    pd.testing.assert_frame_equal(from_csv, from_parquet, check_dtype=False)
    assert from_csv["Ni"].isna().sum() == 360 - 180  # blank cells are missing values


def test_unknown_columns_are_kept(frame: pd.DataFrame, tmp_path: Path) -> None:
    frame["operator"] = "A. Field"
    assert (read_sites(write(frame, tmp_path / "s.csv")).frame["operator"] == "A. Field").all()


def test_missing_element_column_names_the_element_and_the_fix(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    path = write(frame.drop(columns=["Mo"]), tmp_path / "s.csv")
    with pytest.raises(SiteTableError, match=r"no column for element\(s\) \['Mo'\].*--element"):
        read_sites(path)
    assert read_sites(path, elements=("Fe", "Zn")).frame.shape[0] == 360


def test_missing_required_column_is_named(frame: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(SiteTableError, match=r"\['sample_id'\]"):
        read_sites(write(frame.drop(columns=["sample_id"]), tmp_path / "s.csv"))


@pytest.mark.parametrize("column", ["Fe", "lat", "Zn_icpms"])
def test_text_in_a_numeric_column_names_the_column_value_and_row(
    frame: pd.DataFrame, tmp_path: Path, column: str
) -> None:
    frame[column] = frame[column].astype(object)
    frame.loc[4, column] = "12,5"
    with pytest.raises(SiteTableError, match=rf"column '{column}'.*'12,5' at row 5"):
        read_sites(write(frame, tmp_path / "s.csv"))


def test_swapped_lon_and_lat_are_reported_as_swapped(frame: pd.DataFrame, tmp_path: Path) -> None:
    frame[["lon", "lat"]] = frame[["lat", "lon"]].to_numpy()
    with pytest.raises(
        SiteTableError, match=r"sample\(s\) have lon/lat out of range.*look swapped"
    ):
        read_sites(write(frame, tmp_path / "s.csv"))


def test_projected_coordinates_are_refused_as_out_of_range(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    frame.loc[7, "lon"] = 452_000.0
    with pytest.raises(SiteTableError, match=r"1 sample.*row 8 \(S0003-2\).*not projected metres"):
        read_sites(write(frame, tmp_path / "s.csv"))


def test_repeated_sample_ids_are_refused(frame: pd.DataFrame, tmp_path: Path) -> None:
    frame.loc[1, "sample_id"] = frame.loc[0, "sample_id"]
    with pytest.raises(SiteTableError, match=r"\['S0001-1'\] appear.*2 rows"):
        read_sites(write(frame, tmp_path / "s.csv"))


def test_blank_site_id_is_refused(frame: pd.DataFrame, tmp_path: Path) -> None:
    frame.loc[9, "site_id"] = None
    with pytest.raises(SiteTableError, match=r"'site_id' is blank at data row\(s\) 10"):
        read_sites(write(frame, tmp_path / "s.csv"))


def test_a_nodata_code_in_an_element_column_is_refused(frame: pd.DataFrame, tmp_path: Path) -> None:
    frame.loc[3, "Cu"] = -9999
    with pytest.raises(SiteTableError, match=r"'Cu' has 1 negative.*-9999 at row 4.*blank"):
        read_sites(write(frame, tmp_path / "s.csv"))


def test_samples_of_one_site_kilometres_apart_are_refused(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    frame.loc[frame["sample_id"] == "S0010-3", "lat"] += 0.05  # ≈ 5.5 km north
    with pytest.raises(SiteTableError, match=r"site\(s\) \['S0010'\].*site_id and coordinates"):
        read_sites(write(frame, tmp_path / "s.csv"))


def test_a_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sites.xlsx").write_bytes(b"PK")
    with pytest.raises(SiteTableError, match=r"\.csv or \.parquet"):
        read_sites(tmp_path / "sites.xlsx")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SiteTableError, match=r"nope\.csv does not exist"):
        read_sites(tmp_path / "nope.csv")


# --- placing sites on the cube ------------------------------------------------------------


def test_every_plateau_site_is_placed_on_the_pixel_of_its_samples(
    table: SiteTable, located: SiteLocations, grid: TargetGrid
) -> None:
    assert len(located.frame) == 120
    assert located.n_excluded == 0
    first = table.frame.groupby("site_id").first()
    row, col, _ = grid.pixel_index(first["lon"], first["lat"])
    np.testing.assert_array_equal(located.frame["row"], row)
    np.testing.assert_array_equal(located.frame["col"], col)


def test_sites_outside_the_grid_or_on_invalid_pixels_are_excluded_logged_and_counted(
    frame: pd.DataFrame,
    tmp_path: Path,
    grid: TargetGrid,
    cube: xr.Dataset,
    caplog: pytest.LogCaptureFixture,
) -> None:
    invalid_row, invalid_col = np.argwhere(cube["valid"].values == 0)[0]
    lon, lat = grid.pixel_lonlat(invalid_row, invalid_col)
    frame.loc[frame["site_id"] == "S0001", ["lon", "lat"]] = (float(lon), float(lat))
    frame.loc[frame["site_id"] == "S0002", ["lon", "lat"]] = (80.0, 38.0)
    with caplog.at_level(logging.WARNING, logger="tpgrid.fit.sites"):
        located = locate_sites(read_sites(write(frame, tmp_path / "s.csv")), grid, cube)
    assert located.excluded == {"outside_grid": ("S0002",), "invalid_pixel": ("S0001",)}
    assert len(located.frame) == 118
    assert "1 of 120 sites not used (outside grid): S0002" in caplog.text
    assert "1 of 120 sites not used (invalid pixel): S0001" in caplog.text


def test_no_site_on_the_grid_is_an_error(
    frame: pd.DataFrame, tmp_path: Path, grid: TargetGrid, cube: xr.Dataset
) -> None:
    frame["lon"] -= 10.0
    with pytest.raises(SiteTableError, match="none of the 120 sites lies on a valid pixel"):
        locate_sites(read_sites(write(frame, tmp_path / "s.csv")), grid, cube)


def test_extracted_covariates_are_the_cube_values_at_the_site_pixels(
    located: SiteLocations, cube: xr.Dataset
) -> None:
    rows, cols = located.frame["row"].to_numpy(), located.frame["col"].to_numpy()
    values = extract_covariates(cube, rows, cols, ["dem", "vegetation"])
    np.testing.assert_array_equal(values["dem"], cube["dem"].values[rows, cols])
    np.testing.assert_array_equal(values["vegetation"], cube["vegetation"].values[rows, cols])


def test_extraction_reads_only_the_chunks_holding_sites(
    cube_path: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    copy = tmp_path / "cube.zarr"
    shutil.copytree(cube_path, copy)
    (copy / "dem" / "c" / "2" / "2").write_bytes(b"not zstd")  # chunk rows/cols 256..369
    cube = open_cube(copy)
    values = extract_covariates(cube, [10, 100], [20, 120], ["dem"])  # both in chunk (0, 0)
    assert np.isfinite(values["dem"]).all()
    with pytest.raises(RuntimeError, match="Zstd decompression error"):
        extract_covariates(cube, [300], [300], ["dem"])  # the damaged chunk is detectable
