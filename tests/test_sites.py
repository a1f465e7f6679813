"""The site table: validation, placement on the cube, screening, calibration, training rows."""

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
from tpgrid.grid import TargetGrid
from tpgrid.sites import (
    SiteLocations,
    SiteTable,
    extract_covariates,
    fit_calibration,
    locate_sites,
    read_sites,
    screen_outliers,
    training_table,
)
from tpgrid.synthetic import XRF_BIAS, PlateauFiles


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


def injected(plateau: PlateauFiles, element: str) -> set[str]:  # noqa: F811
    outliers = pd.read_csv(plateau.outliers)
    return set(outliers.loc[outliers["element"] == element, "sample_id"])


# --- reading and validating ---------------------------------------------------------------


def test_csv_and_parquet_give_the_same_table(plateau: PlateauFiles) -> None:  # noqa: F811
    from_csv = read_sites(plateau.sites).frame
    from_parquet = read_sites(plateau.sites_parquet).frame
    pd.testing.assert_frame_equal(from_csv, from_parquet, check_dtype=False)
    assert from_csv["Ni"].isna().sum() == 360 - 45  # blank cells are missing values


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
    with caplog.at_level(logging.WARNING, logger="tpgrid.sites"):
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


# --- screening ------------------------------------------------------------------------------


def test_screening_rule_by_hand() -> None:
    values = pd.Series([10.0] * 20 + [100.0], index=[f"s{i}" for i in range(21)])
    screening = screen_outliers(values, 3.0)
    mean, sd = 1 / 21 * (200 + 100), float(values.std(ddof=1))
    assert screening.mean == pytest.approx(mean)
    assert screening.high == pytest.approx(mean + 3 * sd)
    assert screening.removed == {"s20": 100.0}


@pytest.mark.parametrize("element", ["Mn", "Cu", "Ni", "Mo"])
def test_screening_removes_the_injected_outliers_and_nothing_else(
    table: SiteTable,
    located: SiteLocations,
    plateau: PlateauFiles,  # noqa: F811
    element: str,
) -> None:
    result = training_table(table, element, located, screening_sd=3.0)
    assert set(result.record["screening"]["removed"]) == injected(plateau, element)


@pytest.mark.parametrize("element", ["Fe", "Zn", "V"])
def test_screening_of_skewed_elements_removes_every_outlier_and_only_a_few_tail_values(
    table: SiteTable,
    located: SiteLocations,
    plateau: PlateauFiles,  # noqa: F811
    element: str,
) -> None:
    # Mean ± 3 SD is the paper's rule; on right-skewed data it also trims genuine high values.
    removed = training_table(table, element, located, screening_sd=3.0).record["screening"][
        "removed"
    ]
    outliers = injected(plateau, element)
    assert outliers <= set(removed)
    extra = set(removed) - outliers
    assert len(extra) <= 0.01 * table.frame[element].notna().sum()
    assert all(removed[s] > np.nanmean(table.frame[element]) for s in extra)


def test_screening_can_be_turned_off(table: SiteTable, located: SiteLocations) -> None:
    result = training_table(table, "Mn", located, screening_sd=None)
    assert result.record["screening"] is None
    assert len(result.frame) == table.frame["Mn"].notna().sum()


# --- calibration ----------------------------------------------------------------------------


def test_calibration_line_by_hand() -> None:
    icpms = np.array([10.0, 20.0, 30.0, 40.0])
    calibration = fit_calibration(2.0 + 0.5 * icpms, icpms)
    assert (calibration.intercept, calibration.slope) == pytest.approx((2.0, 0.5))
    assert calibration.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(calibration.apply([7.0, 22.0]), [10.0, 40.0])


@pytest.mark.parametrize("element", ["Zn", "Ni"])
def test_calibration_recovers_the_synthetic_xrf_bias(
    table: SiteTable, located: SiteLocations, element: str
) -> None:
    record = training_table(table, element, located, calibrate=True).record["calibration"]
    bias = XRF_BIAS[element]
    assert record["slope"] == pytest.approx(bias.slope, abs=0.05)
    assert record["intercept"] == pytest.approx(bias.intercept, abs=3.0)
    assert record["n_pairs"] >= 20


def test_calibrated_values_lie_on_the_one_to_one_line_with_icpms(
    table: SiteTable, located: SiteLocations
) -> None:
    result = training_table(table, "Zn", located, calibrate=True)
    measured = table.frame.set_index("sample_id")
    paired = measured.loc[result.frame["sample_id"], "Zn_icpms"].dropna().index
    calibrated = result.frame.set_index("sample_id").loc[paired, "value"]
    raw_slope, _ = np.polyfit(measured.loc[paired, "Zn_icpms"], measured.loc[paired, "Zn"], 1)
    slope, intercept = np.polyfit(measured.loc[paired, "Zn_icpms"], calibrated, 1)
    assert abs(raw_slope - 1.0) > 0.2  # XRF flattens Zn: low values read high, high ones low
    assert (slope, intercept) == pytest.approx((1.0, 0.0), abs=1e-9)


def test_calibration_without_icpms_values_is_refused(
    frame: pd.DataFrame, tmp_path: Path, grid: TargetGrid, cube: xr.Dataset
) -> None:
    table = read_sites(write(frame.drop(columns=["Zn_icpms"]), tmp_path / "s.csv"))
    with pytest.raises(SiteTableError, match=r"calibrating Zn needs.*'Zn_icpms'"):
        training_table(table, "Zn", locate_sites(table, grid, cube), calibrate=True)


def test_calibrating_an_element_whose_xrf_ignores_icpms_is_refused(
    table: SiteTable, located: SiteLocations
) -> None:
    frame = table.frame.copy()
    frame["Cu_icpms"] = frame["Cu_icpms"].sample(frac=1.0, random_state=0).to_numpy()  # unpaired
    shuffled = SiteTable(table.path, frame, table.sha256)
    with pytest.raises(SiteTableError, match="XRF does not follow ICP-MS for Cu"):
        training_table(shuffled, "Cu", located, calibrate=True)


# --- training rows ----------------------------------------------------------------------------


def test_training_on_samples_keeps_one_row_per_screened_sample(
    table: SiteTable, located: SiteLocations
) -> None:
    result = training_table(table, "Mn", located)
    assert len(result.frame) == 357 - 4
    assert result.n_sites == 119
    assert result.record["n_rows"] == len(result.frame)


def test_training_on_site_means_gives_one_row_per_site_with_its_mean(
    table: SiteTable, located: SiteLocations
) -> None:
    samples = training_table(table, "Mn", located)
    means = training_table(table, "Mn", located, train_on="site_means")
    assert means.frame["site_id"].is_unique
    assert len(means.frame) == samples.n_sites == means.n_sites
    expected = samples.frame.groupby("site_id")["value"].mean()
    np.testing.assert_allclose(means.frame.set_index("site_id")["value"], expected)
    assert means.frame["sample_id"].isna().all()


def test_an_element_with_no_values_is_an_error_naming_it(
    frame: pd.DataFrame, tmp_path: Path, located: SiteLocations
) -> None:
    frame["V"] = np.nan
    table = read_sites(write(frame, tmp_path / "s.csv"))
    with pytest.raises(SiteTableError, match="column 'V' has no values"):
        training_table(table, "V", located)


def test_an_element_measured_only_on_excluded_sites_is_an_error(
    table: SiteTable, grid: TargetGrid, cube: xr.Dataset
) -> None:
    frame = table.frame.copy()
    on_ni_sites = frame["site_id"].isin(frame.loc[frame["Ni"].notna(), "site_id"])
    frame.loc[on_ni_sites, "lon"] += 20.0  # off the grid
    moved = SiteTable(table.path, frame, table.sha256)
    located = locate_sites(moved, grid, cube)
    assert located.n_excluded == 15
    with pytest.raises(SiteTableError, match=r"no usable Ni values: 45 measured, 1 screened out"):
        training_table(moved, "Ni", located)
