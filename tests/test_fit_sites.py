"""The site table: validation, placement on the cube, covariates at the sites."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from affine import Affine

from tests.conftest import write_tif
from tests.plateau_fixtures import cube_path, plateau  # noqa: F401  (fixtures)
from tpgrid.cube import build_cube, cube_grid, open_cube
from tpgrid.errors import SiteTableError
from tpgrid.fit.sites import (
    ELEMENTS,
    SiteLocations,
    SiteSource,
    SiteTable,
    extract_covariates,
    locate_sites,
    read_sites,
)
from tpgrid.grid import GridSpec, TargetGrid
from tpgrid.sources import load_catalog
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
        read_sites(path, elements=ELEMENTS)
    assert read_sites(path, elements=("Fe", "Zn")).frame.shape[0] == 360
    # Without elements: every element column the table has.
    assert read_sites(path).elements == ("Fe", "Mn", "Cu", "Zn", "Ni", "V")


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
        SiteTableError, match=r"sample\(s\) have \['lon', 'lat'\] out of range.*look swapped"
    ):
        read_sites(write(frame, tmp_path / "s.csv"))


def test_projected_coordinates_are_refused_as_out_of_range(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    frame.loc[7, "lon"] = 452_000.0
    with pytest.raises(
        SiteTableError,
        match=r"1 sample.*row 8 \(S0003-2\).*for projected metres set the table's CRS",
    ):
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


# --- a survey elsewhere: sites in a projected CRS, other elements ---------------------------

UTM = "EPSG:32633"


def survey(x: list[float], y: list[float], **columns: list[float]) -> pd.DataFrame:
    """Two samples per site at each (x, y), with Pb, Cd and As."""
    n = len(x)
    return pd.DataFrame(
        {
            "site_id": [f"P{i}" for i in range(n) for _ in range(2)],
            "sample_id": [f"P{i}-{k}" for i in range(n) for k in (1, 2)],
            "x": np.repeat(x, 2),
            "y": np.repeat(y, 2),
            "Pb": 20.0,
            "Cd": 0.3,
            "As": 8.0,
            "depth_cm": 10,
        }
        | {name: np.repeat(values, 2) for name, values in columns.items()}
    )


def test_a_projected_table_gets_lonlat_and_its_own_elements(tmp_path: Path) -> None:
    path = write(survey([500_000.0, 520_000.0], [4_990_000.0, 4_991_000.0]), tmp_path / "s.csv")
    table = read_sites(SiteSource(path=path, crs=UTM))
    assert table.crs == UTM
    assert table.elements == ("Pb", "Cd", "As")  # not depth_cm
    assert table.coordinates == ("x", "y")
    # x = 500,000 is the central meridian of zone 33 (15 °E).
    np.testing.assert_allclose(table.frame["lon"].iloc[0], 15.0, atol=1e-9)
    np.testing.assert_allclose(table.frame["lat"].iloc[0], 45.06, atol=0.01)
    assert table.frame["x"].iloc[2] == 520_000.0
    assert table.source == SiteSource(path=path, crs=UTM, x="x", y="y")


def test_coordinate_columns_of_any_name(tmp_path: Path) -> None:
    frame = survey([500_000.0], [4_990_000.0]).rename(columns={"x": "easting", "y": "northing"})
    path = write(frame, tmp_path / "s.csv")
    with pytest.raises(SiteTableError, match=r"no column\(s\) \['x', 'y'\].*'x' and 'y'.*'sites'"):
        read_sites(SiteSource(path=path, crs=UTM))
    table = read_sites(SiteSource(path=path, crs=UTM, x="easting", y="northing"))
    assert table.frame["x"].tolist() == [500_000.0, 500_000.0]
    assert table.coordinates == ("easting", "northing")


def test_degrees_in_a_projected_table_point_at_the_crs_key(
    tmp_path: Path, grid: TargetGrid, cube: xr.Dataset
) -> None:
    # Lhasa's lon/lat read as UTM metres: valid coordinates (near 15 °E, 0 °N), off the grid.
    path = write(survey([91.1], [29.65]), tmp_path / "s.csv")
    table = read_sites(SiteSource(path=path, crs=UTM))
    with pytest.raises(SiteTableError, match=r"look like lon/lat degrees: set 'crs: EPSG:4326'"):
        locate_sites(table, grid, cube)


def test_the_sample_spread_check_works_in_metres_in_a_projected_crs(tmp_path: Path) -> None:
    frame = survey([500_000.0], [4_990_000.0])
    frame.loc[1, "x"] += 2_500.0  # 2.5 km east of its twin: 1.25 km from their centre
    with pytest.raises(SiteTableError, match=r"site\(s\) \['P0'\].*1000 m"):
        read_sites(SiteSource(path=write(frame, tmp_path / "s.csv"), crs=UTM))
    frame.loc[1, "x"] -= 2_400.0  # 100 m: one site
    assert len(read_sites(SiteSource(path=write(frame, tmp_path / "s.csv"), crs=UTM)).frame) == 2


def test_sites_on_exact_cell_edges_land_in_their_pixel_in_the_grid_crs(
    tmp_path: Path, make_catalog: Callable[..., Path]
) -> None:
    """Given in the grid's CRS, a site on a pixel's west/north edge is in that pixel (half-open
    intervals): no lon/lat round trip nudges it across."""
    transform = Affine(100, 0, 500_000.0, 0, -100, 4_991_000.0)
    write_tif(tmp_path / "clay.tif", np.ones((10, 10), "float32"), crs=UTM, transform=transform)
    catalog = make_catalog({"clay": {"path": "clay.tif", "kind": "continuous", "group": "soil"}})
    grid = TargetGrid.from_spec(GridSpec(like=str(tmp_path / "clay.tif"), chunk=16))
    build_cube(load_catalog(catalog), grid, tmp_path / "cube.zarr")
    x = [500_000.0, 500_300.0, 500_900.0, 500_400.0]
    y = [4_991_000.0, 4_990_700.0, 4_990_100.0, 4_990_000.0]  # the last on the south edge
    path = write(survey(x, y), tmp_path / "s.csv")
    located = locate_sites(
        read_sites(SiteSource(path=path, crs=UTM)), grid, open_cube(tmp_path / "cube.zarr")
    )
    assert located.frame["row"].tolist() == [0, 3, 9]
    assert located.frame["col"].tolist() == [0, 3, 9]
    assert located.excluded == {"outside_grid": ("P3",)}
    assert {"lon", "lat"} <= set(located.frame.columns)


def test_no_projected_site_on_the_grid_names_the_crs_key(
    table: SiteTable, grid: TargetGrid, cube: xr.Dataset, tmp_path: Path
) -> None:
    path = write(survey([500_000.0], [4_990_000.0]), tmp_path / "s.csv")
    with pytest.raises(
        SiteTableError,
        match=r"none of the 1 sites.*ESRI:102025.*in EPSG:32633 \(set 'crs' under 'sites'",
    ):
        locate_sites(read_sites(SiteSource(path=path, crs=UTM)), grid, cube)
