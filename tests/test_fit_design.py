"""One element's training table: outlier screening, XRF → ICP-MS calibration, training rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests.plateau_fixtures import cube_path, plateau  # noqa: F401  (fixtures)
from tpgrid.cube import cube_grid, open_cube
from tpgrid.errors import SiteTableError
from tpgrid.fit.design import fit_calibration, screen_outliers, training_table
from tpgrid.fit.sites import SiteLocations, SiteTable, locate_sites, read_sites
from tpgrid.grid import TargetGrid
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
    frame.loc[on_ni_sites, ["x", "lon"]] += 20.0  # off the grid (x: the table's own lon)
    moved = SiteTable(table.path, frame, table.sha256)
    located = locate_sites(moved, grid, cube)
    assert located.n_excluded == 60  # the small plateau's Ni sites
    with pytest.raises(SiteTableError, match=r"no usable Ni values: 180 measured, 1 screened out"):
        training_table(moved, "Ni", located)
