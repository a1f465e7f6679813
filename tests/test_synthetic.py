"""The synthetic plateau: reproducible files, mixed CRSs, a valid catalog, truth and sites."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml

from tpgrid.errors import ConfigError, OutputExistsError
from tpgrid.grid import TargetGrid, load_grid_spec
from tpgrid.sources import load_catalog, open_layer
from tpgrid.synthetic import (
    ELEMENTS,
    LITHOLOGY_FACTORS,
    SIZES,
    VEGETATION_FACTORS,
    XRF_BIAS,
    PlateauFiles,
    log_truth_without_intercept,
    write_plateau,
)
from tpgrid.synthetic.layers import LITHOLOGY_CLASSES
from tpgrid.synthetic.products import NativeRaster, on_target_grid
from tpgrid.synthetic.sampling import MIN_SITES_PER_ELEMENT, site_density, site_design
from tpgrid.synthetic.truth import RESPONSES, response_functions


@pytest.fixture(scope="module")
def plateau(tmp_path_factory: pytest.TempPathFactory) -> PlateauFiles:
    return write_plateau(tmp_path_factory.mktemp("plateau"), "small", seed=0)


@pytest.fixture(scope="module")
def sites(plateau: PlateauFiles) -> pd.DataFrame:
    return pd.read_csv(plateau.sites)


@pytest.fixture(scope="module")
def grid(plateau: PlateauFiles) -> TargetGrid:
    return TargetGrid.from_spec(load_grid_spec(plateau.grid))


@pytest.fixture(scope="module")
def truth_doc(plateau: PlateauFiles) -> dict[str, Any]:
    return dict(json.loads(plateau.truth_json.read_text()))


def file_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.mark.slow
def test_same_seed_writes_byte_identical_files(plateau: PlateauFiles, tmp_path: Path) -> None:
    again = write_plateau(tmp_path / "again", "small", seed=0)
    assert file_bytes(again.root) == file_bytes(plateau.root)


@pytest.mark.slow
def test_other_seed_writes_other_files(plateau: PlateauFiles, tmp_path: Path) -> None:
    other = file_bytes(write_plateau(tmp_path / "other", "small", seed=1).root)
    first = file_bytes(plateau.root)
    assert other.keys() == first.keys()
    assert all(other[name] != first[name] for name in ("covariates/dem.tif", "sites.csv"))


@pytest.mark.slow
def test_overwrite_replaces_a_previous_plateau(plateau: PlateauFiles, tmp_path: Path) -> None:
    write_plateau(tmp_path, "small", seed=1)
    replaced = write_plateau(tmp_path, "small", seed=0, overwrite=True)
    assert file_bytes(replaced.root) == file_bytes(plateau.root)


def test_refuses_to_write_into_a_non_empty_directory(plateau: PlateauFiles) -> None:
    with pytest.raises(OutputExistsError, match="overwrite=True") as info:
        write_plateau(plateau.root, "small")
    assert str(plateau.root) in str(info.value)


def test_unknown_size_is_a_config_error_listing_the_sizes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="small, full"):
        write_plateau(tmp_path / "x", "medium")
    assert not (tmp_path / "x").exists()


def test_layers_come_in_four_crss_and_several_resolutions(plateau: PlateauFiles) -> None:
    crss, resolutions = set(), set()
    for name in plateau.layers:
        with rasterio.open(plateau.root / "covariates" / f"{name}.tif") as src:
            crss.add(src.crs.to_wkt())
            resolutions.add(round(src.res[0], 6))
            assert src.profile["tiled"]
            assert src.profile["compress"] == "deflate"
    assert len(crss) >= 4
    expected = {1 / 240, 1 / 120, 0.1, 0.25, 926.625433, 1000.0, 2500.0}
    assert resolutions == {round(r, 6) for r in expected}


def test_catalog_loads_and_every_layer_opens_with_a_crs(plateau: PlateauFiles) -> None:
    catalog = load_catalog(plateau.catalog)
    assert set(catalog.layers) == set(plateau.layers)
    assert catalog.terrain is not None
    assert catalog.terrain.dem == "dem"
    for name in plateau.layers:
        data = open_layer(catalog, name)
        assert data.rio.crs is not None
        layer = catalog.layers[name]
        if layer.kind == "continuous":
            assert layer.valid_range is not None
            values = data.values[data.values != data.attrs["nodata"]]
            assert layer.valid_range[0] <= values.min() <= values.max() <= layer.valid_range[1]


def test_catalog_groups_name_what_each_layer_is(plateau: PlateauFiles) -> None:
    layers = load_catalog(plateau.catalog).layers
    assert layers["vegetation"].group == "land_cover"
    assert layers["lithology"].group == "geology"
    assert "categorical" not in {layer.group for layer in layers.values()}


def test_lithology_classes_are_named_in_words_with_their_map_codes(
    plateau: PlateauFiles,
) -> None:
    classes = load_catalog(plateau.catalog).layers["lithology"].classes
    assert classes is not None
    assert classes[2] == "acid metamorphic (MA)"
    assert [name[-3:-1] for name in classes.values()] == list(LITHOLOGY_CLASSES.values())
    assert all(len(name) > 8 for name in classes.values())


def test_the_real_catalog_template_names_groups_and_classes_like_the_synthetic_one(
    plateau: PlateauFiles,
) -> None:
    template = load_catalog(Path(__file__).parents[1] / "pipelines" / "tibet_catalog.yaml")
    synthetic = load_catalog(plateau.catalog)
    assert {n: layer.group for n, layer in template.layers.items()} == {
        n: layer.group for n, layer in synthetic.layers.items()
    }
    assert template.layers["lithology"].classes == synthetic.layers["lithology"].classes


def test_grid_yaml_states_the_whole_grid(plateau: PlateauFiles) -> None:
    written = yaml.safe_load(plateau.grid.read_text())
    assert written == {
        "crs": "ESRI:102025",
        "resolution": 1000.0,
        "bbox": [90.0, 30.0, 94.0, 33.0],
        "chunk": 128,
        "mask": "plateau",
    }


def test_texture_fractions_sum_to_100(plateau: PlateauFiles) -> None:
    def read(name: str) -> np.ndarray:
        with rasterio.open(plateau.root / "covariates" / f"{name}.tif") as src:
            return src.read(1, masked=True)

    total = read("clay") + read("silt") + read("sand")
    np.testing.assert_allclose(total.compressed(), 100.0, atol=1e-3)


def test_dem_has_nodata_voids(plateau: PlateauFiles) -> None:
    with rasterio.open(plateau.root / "covariates" / "dem.tif") as src:
        dem = src.read(1)
        assert src.nodata == -32768
    voids = dem == -32768
    assert 50 < voids.sum() < 0.01 * dem.size


def test_truth_rasters_share_the_target_grid(plateau: PlateauFiles, grid: TargetGrid) -> None:
    mask = np.asarray(grid.mask())
    for element in ELEMENTS:
        with rasterio.open(plateau.truth(element)) as src:
            assert src.crs == rasterio.crs.CRS.from_wkt(grid.crs_wkt)
            assert src.transform == grid.geobox.affine
            assert src.shape == grid.shape
            truth = src.read(1)
        assert np.isnan(truth[~mask]).all()
        assert np.isfinite(truth[mask]).mean() > 0.95


def test_truth_is_the_declared_function_of_the_covariate_files(
    plateau: PlateauFiles, grid: TargetGrid, truth_doc: dict[str, Any]
) -> None:
    products = {}
    for name in plateau.layers:
        with rasterio.open(plateau.root / "covariates" / f"{name}.tif") as src:
            products[name] = NativeRaster(src.read(1), src.crs.to_wkt(), src.transform)
    covariates = on_target_grid(products, grid)
    for element in ("Fe", "Ni"):
        intercept = truth_doc["elements"][element]["intercept"]
        expected = np.exp(log_truth_without_intercept(covariates, element) + intercept)
        with rasterio.open(plateau.truth(element)) as src:
            truth = src.read(1)
        known = np.isfinite(truth)
        np.testing.assert_allclose(truth[known], expected[known], rtol=1e-5)


def test_every_site_lies_inside_the_mask_with_its_samples_on_one_pixel(
    sites: pd.DataFrame, grid: TargetGrid
) -> None:
    row, col, inside = grid.pixel_index(sites["lon"], sites["lat"])
    assert inside.all()
    assert np.asarray(grid.mask())[row, col].all()
    pixels = pd.DataFrame({"site": sites["site_id"], "pixel": row * 100_000 + col})
    assert (pixels.groupby("site")["pixel"].nunique() == 1).all()
    assert pixels.groupby("site").size().eq(3).all()
    assert pixels.groupby("site")["pixel"].first().is_unique


def test_triplicates_lie_metres_apart(sites: pd.DataFrame) -> None:
    spread = sites.groupby("site_id")[["lon", "lat"]].agg(lambda v: v.max() - v.min())
    metres = np.hypot(spread["lon"] * 93_000, spread["lat"] * 111_000)
    assert metres.between(5, 25).all()


def test_site_table_has_the_documented_columns(plateau: PlateauFiles, sites: pd.DataFrame) -> None:
    expected = [
        "site_id",
        "sample_id",
        "lon",
        "lat",
        "vegetation",
        "lithology",
        "year",
        *ELEMENTS,
        *(f"{e}_icpms" for e in ELEMENTS),
    ]
    assert list(sites.columns) == expected
    pd.testing.assert_frame_equal(pd.read_parquet(plateau.sites_parquet), sites)


def test_element_site_counts_follow_the_missingness_design(sites: pd.DataFrame) -> None:
    design = site_design(sites["site_id"].nunique())
    per_site = sites.groupby("site_id")[list(ELEMENTS)].count()
    assert per_site.isin([0, 3]).all().all()  # whole sites are missing, never single samples
    counts = (per_site == 3).sum()
    assert counts.to_dict() == design.sites_per_element
    assert min(counts["Ni"], counts["Mo"]) >= MIN_SITES_PER_ELEMENT
    assert counts["Fe"] == counts["Zn"] == sites["site_id"].nunique()


def test_injected_outliers_stand_out_and_few_others_do(
    plateau: PlateauFiles, sites: pd.DataFrame
) -> None:
    outliers = pd.read_csv(plateau.outliers)
    design = site_design(sites["site_id"].nunique())
    assert outliers.groupby("element").size().to_dict() == design.outliers_per_element
    for element in ELEMENTS:
        values = sites.set_index("sample_id")[element].dropna()
        far = (values - values.mean()).abs() > 3 * values.std()
        injected = outliers.loc[outliers["element"] == element, "sample_id"]
        assert far[injected].all(), element
        assert far.drop(injected).mean() <= 0.01, element


@pytest.mark.parametrize(("element", "slope_tolerance"), [("Zn", 0.1), ("Ni", 0.1), ("Fe", 0.25)])
def test_xrf_against_icpms_recovers_the_bias(
    sites: pd.DataFrame, element: str, slope_tolerance: float
) -> None:
    pairs = sites[[element, f"{element}_icpms"]].dropna()
    assert len(pairs) >= 15
    slope, intercept = np.polyfit(pairs[f"{element}_icpms"], pairs[element], 1)
    bias = XRF_BIAS[element]
    assert slope == pytest.approx(bias.slope, abs=slope_tolerance)
    assert intercept == pytest.approx(bias.intercept, abs=slope_tolerance * pairs[element].mean())


def test_calibration_subset_size(sites: pd.DataFrame) -> None:
    icpms = sites[[f"{e}_icpms" for e in ELEMENTS]].notna().any(axis=1)
    assert icpms.sum() == site_design(sites["site_id"].nunique()).n_calibration


def test_map_response_is_u_shaped_with_its_trough_at_300_to_500_mm() -> None:
    mm = np.linspace(20, 900, 881)
    response = response_functions()["map"](mm)
    assert 300 <= mm[np.argmin(response)] <= 500
    assert min(response[0], response[-1]) > response.min() + 1.0


def test_cia_has_no_effect_below_half_and_rises_above() -> None:
    cia = np.linspace(0.3, 0.9, 601)
    slope = np.gradient(RESPONSES["cia"](cia), cia)
    assert np.allclose(slope[cia < 0.49], 0.0)
    assert (slope[cia > 0.51] > 0).all()


def test_slope_response_rises_below_10_degrees_and_saturates_above() -> None:
    response = RESPONSES["slope"]
    gain_below = response(10.0) - response(0.0)
    gain_above = response(30.0) - response(10.0)
    assert gain_below > 0.9
    assert gain_above < 0.1


def test_vegetation_and_lithology_factors_follow_the_paper() -> None:
    fe = VEGETATION_FACTORS["Fe"]
    assert min(fe["forest"], fe["shrub"]) > max(fe["desert"], fe["steppe"])
    ni = LITHOLOGY_FACTORS["Ni"]
    assert max(ni, key=ni.__getitem__) == "MA"
    assert min(ni, key=ni.__getitem__) == "SO"


def test_truth_json_records_the_model(truth_doc: dict[str, Any]) -> None:
    assert set(truth_doc["responses"]) == set(RESPONSES)
    fe = truth_doc["elements"]["Fe"]
    assert fe["vegetation_factors"] == VEGETATION_FACTORS["Fe"]
    assert truth_doc["elements"]["Zn"]["xrf_bias"] == {
        "intercept": 8.0,
        "slope": 0.75,
        "noise_sd": XRF_BIAS["Zn"].noise_sd,
    }
    assert all(truth_doc["elements"][e]["coefficients"]["cia"] > 0 for e in ELEMENTS)


def test_site_means_are_on_the_paper_scale(sites: pd.DataFrame, plateau: PlateauFiles) -> None:
    outliers = pd.read_csv(plateau.outliers)
    for element in ("Fe", "Mn", "Cu", "V"):
        clean = sites.loc[
            ~sites["sample_id"].isin(outliers.loc[outliers["element"] == element, "sample_id"]),
            element,
        ]
        paper_mean = {"Fe": 22864.30, "Mn": 576.74, "Cu": 25.32, "V": 56.99}[element]
        assert clean.mean() == pytest.approx(paper_mean, rel=0.1)


def test_sampling_is_dense_in_the_south_east_and_sparse_in_the_north_west() -> None:
    south_east = site_density(np.array([99.0]), np.array([30.5]))
    changtang = site_density(np.array([84.0]), np.array([34.5]))
    assert south_east[0] > 8 * changtang[0]


def test_sizes_are_small_for_tests_and_the_whole_plateau_for_full() -> None:
    small = TargetGrid.from_spec(SIZES["small"]).shape
    assert all(200 <= n <= 600 for n in small)
    assert TargetGrid.from_spec(SIZES["full"]).shape == (1663, 2426)
