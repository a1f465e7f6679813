"""Dissimilarity index and area of applicability: hand-worked distances, the cross-validated
threshold, and the map layers computed chunk by chunk on a Dask cluster over a plateau with a
region whose CIA lies outside anything the training sites saw."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import zarr
from distributed import Client, LocalCluster
from pyproj import Transformer
from sklearn.ensemble import RandomForestRegressor

from tests.plateau_fixtures import plateau  # noqa: F401  (fixture)
from tpgrid.aoa import ElementApplicability, applicability_cube
from tpgrid.artifact import ModelArtifact
from tpgrid.core.applicability import TrainingSpace, column_weights, dissimilarity, training_space
from tpgrid.core.blocks import AOA_NODATA, applicability_block
from tpgrid.core.explain import importance_table
from tpgrid.core.features import CategoricalFeature, FeatureSpec
from tpgrid.core.forest import pack_forest
from tpgrid.cube import build_cube, cube_grid, open_cube
from tpgrid.errors import AnalysisError, FeatureMismatchError, OutputExistsError
from tpgrid.fit.design import cube_layers, feature_spec, training_table
from tpgrid.fit.heldout import held_out_fold
from tpgrid.fit.search import group_folds
from tpgrid.fit.sites import extract_covariates, locate_sites, read_sites
from tpgrid.grid import TargetGrid, load_grid_spec
from tpgrid.sources import load_catalog
from tpgrid.synthetic import PlateauFiles

#: lon_min, lat_min, lon_max, lat_max of the region made foreign to the training sites.
BOX = (92.6, 31.2, 93.6, 32.2)
#: What the region gets added: soil and productivity beyond anything the sites saw (the small
#: plateau's CIA is 0.52–0.71, clay 12–26 %, NPP 110–400 gC/m²/yr).
RAISED = {"cia": 0.25, "clay": 15.0, "npp": 300.0}


def in_box(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return (lon >= BOX[0]) & (lon <= BOX[2]) & (lat >= BOX[1]) & (lat <= BOX[3])


def raise_in_box(path: Path, amount: float) -> None:
    """Add ``amount`` to the present pixels of a GeoTIFF whose centres lie in :data:`BOX`."""
    with rasterio.open(path) as src:
        profile, data, nodata = src.profile, src.read(1), src.nodata
        rows, cols = np.indices(data.shape)
        x, y = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel())
        lon, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(x, y)
    inside = in_box(np.reshape(lon, data.shape), np.reshape(lat, data.shape)) & (data != nodata)
    data[inside] += amount
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


@dataclass(frozen=True)
class Applicability:
    cube: Path
    out: Path
    model: ElementApplicability
    shares: dict[str, float]


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as dask_client,
    ):
        yield dask_client


@pytest.fixture(scope="module")
def applicability(
    plateau: PlateauFiles,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
    client: Client,
) -> Applicability:
    root = tmp_path_factory.mktemp("aoa") / "plateau"
    shutil.copytree(plateau.root, root)
    for layer, amount in RAISED.items():
        raise_in_box(root / "covariates" / f"{layer}.tif", amount)
    cube_path = root.parent / "cube.zarr"
    grid = TargetGrid.from_spec(load_grid_spec(root / "grid.yaml"))
    build_cube(load_catalog(root / "catalog.yaml"), grid, cube_path)

    # Fe sites outside the box train the model; the box's CIA is new to it.
    cube = open_cube(cube_path)
    table = read_sites(root / "sites.csv")
    located = locate_sites(table, grid, cube)
    outside = located.frame[
        ~in_box(located.frame["lon"].to_numpy(), located.frame["lat"].to_numpy())
    ]
    frame = training_table(table, "Fe", located).frame
    frame = frame[frame["site_id"].isin(outside.index)].reset_index(drop=True)
    # A model of the regional covariates: on the small plateau Fe's own forest leans on slope
    # and lithology, which the region keeps as they were; its CIA, clay and NPP become new.
    layers = {
        name: attrs
        for name, attrs in cube_layers(cube, cube_path).items()
        if name not in ("slope", "northness", "eastness", "lithology")
    }
    at_sites = extract_covariates(
        cube, outside["row"].to_numpy(), outside["col"].to_numpy(), list(layers)
    )
    index = outside.index.get_indexer(pd.Index(frame["site_id"]))
    values = {name: column[index] for name, column in at_sites.items()}
    features = feature_spec(layers, values)
    X, _ = features.matrix(values)
    y = frame["value"].to_numpy()
    folds = group_folds(frame["site_id"].to_numpy(), 5, seed=0)
    forest = RandomForestRegressor(n_estimators=40, min_samples_leaf=2, random_state=0, n_jobs=2)
    variables = list(features.column_variables)
    params = {"min_samples_leaf": 2}
    parts = [held_out_fold(X, y, folds, f, params, 40, 0, variables, 2) for f in range(5)]
    importance = importance_table(
        sum(part.base_sse for part in parts), sum(part.sse for part in parts), variables
    )
    weights = column_weights(importance["incmse"].to_dict(), features.column_variables)
    space = training_space(X, frame["site_id"], folds, weights, features)
    artifact = ModelArtifact("Fe", pack_forest(forest.fit(X, y)), features)
    out = root.parent / "applicability.zarr"
    shares = applicability_cube(cube_path, [ElementApplicability(artifact, space)], out)
    return Applicability(cube_path, out, ElementApplicability(artifact, space), shares)


def aoa_layer(result: Applicability) -> np.ndarray:
    return np.asarray(zarr.open_array(result.out / "Fe_aoa", mode="r")[:])


def box_pixels(result: Applicability) -> np.ndarray:
    grid = cube_grid(result.cube)
    rows, cols = np.indices(grid.shape)
    lon, lat = grid.pixel_lonlat(rows.ravel(), cols.ravel())
    return in_box(lon, lat).reshape(grid.shape)


# --- on the cluster, over the cube -----------------------------------------------------------


@pytest.mark.slow
def test_aoa_excludes_the_region_whose_covariates_lie_outside_the_training_range(
    applicability: Applicability,
) -> None:
    aoa = aoa_layer(applicability)
    inside_box = box_pixels(applicability) & (aoa != AOA_NODATA)
    assert inside_box.sum() > 5000
    assert np.mean(aoa[inside_box] == 1) < 0.01


@pytest.mark.slow
def test_aoa_keeps_most_of_the_plateau_the_sites_represent(applicability: Applicability) -> None:
    aoa = aoa_layer(applicability)
    elsewhere = ~box_pixels(applicability) & (aoa != AOA_NODATA)
    assert np.mean(aoa[elsewhere] == 1) > 0.7


@pytest.mark.slow
def test_cluster_layers_equal_the_chunk_computed_directly(applicability: Applicability) -> None:
    window = next(cube_grid(applicability.cube).windows())
    chunk = open_cube(applicability.cube).isel(y=window.rows, x=window.cols).load()
    features = applicability.model.artifact.features
    values = {name: chunk[name].values for name in features.variables}
    valid = chunk["valid"].values == 1
    direct = applicability_block(applicability.model.space, features, values, valid)
    stored = zarr.open_array(applicability.out / "Fe_di", mode="r")[window.rows, window.cols]
    np.testing.assert_array_equal(stored, direct.di)


@pytest.mark.slow
def test_share_inside_is_reported_per_element(applicability: Applicability) -> None:
    aoa = aoa_layer(applicability)
    expected = np.mean(aoa[aoa != AOA_NODATA] == 1)
    assert applicability.shares == {"Fe": pytest.approx(expected)}


@pytest.mark.slow
def test_applicability_refuses_to_replace_an_existing_output(
    applicability: Applicability,
) -> None:
    with pytest.raises(OutputExistsError, match="--overwrite"):
        applicability_cube(applicability.cube, [applicability.model], applicability.out)


@pytest.mark.slow
def test_applicability_refuses_a_model_the_cube_cannot_feed(
    applicability: Applicability, tmp_path: Path
) -> None:
    features = FeatureSpec(("dem", "permafrost"))
    forest = pack_forest(RandomForestRegressor(n_estimators=2).fit(np.zeros((4, 2)), np.arange(4)))
    model = ElementApplicability(ModelArtifact("Fe", forest, features), applicability.model.space)
    with pytest.raises(FeatureMismatchError, match="permafrost"):
        applicability_cube(applicability.cube, [model], tmp_path / "aoa.zarr")


# --- the index itself, by hand -------------------------------------------------------------------


def line_space(weights: tuple[float, ...] = (1.0,)) -> TrainingSpace:
    """Four sites at x = 0, 1, 2, 3 (one predictor; a second one if two weights), 4 folds."""
    X = np.column_stack([np.arange(4.0), np.array([5.0, -5.0, 5.0, -5.0])])[:, : len(weights)]
    features = FeatureSpec(("x", "z")[: len(weights)])
    return training_space(X, ["a", "b", "c", "d"], [0, 1, 2, 3], weights, features)


def test_di_is_the_distance_to_the_nearest_site_over_the_mean_site_distance() -> None:
    space = line_space()
    # Mean distance between 0, 1, 2, 3 is 10/6; from 5 the nearest site is 3, 2 away.
    np.testing.assert_allclose(dissimilarity(space, [[5.0], [1.0], [1.5]]), [1.2, 0.0, 0.3])


def test_a_predictor_of_zero_weight_does_not_move_the_di() -> None:
    space = line_space(weights=(1.0, 0.0))
    np.testing.assert_allclose(dissimilarity(space, [[5.0, 100.0]]), [1.2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_di_equals_the_brute_force_nearest_site_on_random_data(seed: int) -> None:
    # Sites in clusters and pixels along a smooth path through and beyond them (as a chunk's
    # pixels run), some on a site exactly, some with a missing value, some weights 0: the
    # search's first guess and its bounds must never change which site is the nearest.
    rng = np.random.default_rng(seed)
    n_columns = 12
    centres = rng.normal(size=(6, n_columns)) * 3
    X = centres[rng.integers(0, 6, 90)] + rng.normal(size=(90, n_columns))
    sites = np.repeat(np.arange(30), 3)
    weights = rng.uniform(size=n_columns) * (rng.uniform(size=n_columns) > 0.2)
    weights[0] = 1.0
    features = FeatureSpec(tuple(f"v{k}" for k in range(n_columns)))
    space = training_space(X, sites, sites % 5, weights, features)
    path = np.cumsum(rng.normal(scale=0.3, size=(3000, n_columns)), axis=0)
    pixels = np.concatenate([path, rng.normal(scale=6, size=(500, n_columns)), X[::3]])
    pixels[rng.integers(0, len(pixels), 50), rng.integers(0, n_columns, 50)] = np.nan
    transformed = space.transform(pixels)
    brute = np.sqrt(((transformed[:, None, :] - space.points[None]) ** 2).sum(axis=2)).min(axis=1)
    expected = np.where(np.isfinite(pixels).all(axis=1), brute, np.nan) / space.mean_distance
    di = dissimilarity(space, pixels.astype(np.float32))
    np.testing.assert_allclose(
        di, dissimilarity(space, pixels.astype(np.float32).astype(np.float64)), rtol=0
    )
    np.testing.assert_allclose(dissimilarity(space, pixels), expected, rtol=1e-12, atol=1e-14)
    assert (dissimilarity(space, X[::3]) == 0).all()


def test_rows_with_a_missing_predictor_get_no_di() -> None:
    assert np.isnan(dissimilarity(line_space(), [[np.nan]])[0])


def test_training_di_ignores_a_site_own_triplicates() -> None:
    X = np.repeat(np.arange(6.0)[:, None], 3, axis=0)
    sites = np.repeat(list("abcdef"), 3)
    space = training_space(X, sites, np.repeat([0, 1, 2, 0, 1, 2], 3), [1.0], FeatureSpec(("x",)))
    # Every site's nearest neighbour in another fold is one step away, never its own copies.
    assert space.points.shape == (6, 1)
    assert np.all(space.train_di > 0)


def test_threshold_is_the_upper_whisker_of_the_training_di() -> None:
    x = np.concatenate([np.arange(20.0), [200.0]])  # one site far from all others
    sites = [f"s{i}" for i in range(21)]
    space = training_space(x[:, None], sites, np.arange(21) % 5, [1.0], FeatureSpec(("x",)))
    q1, q3 = np.quantile(space.train_di, [0.25, 0.75])
    below = space.train_di[space.train_di <= q3 + 1.5 * (q3 - q1)]
    assert space.threshold == below.max()
    assert space.threshold < space.train_di.max()  # the far site is outside its own AOA


def test_training_space_refuses_a_site_split_across_folds() -> None:
    with pytest.raises(AnalysisError, match="more than one CV fold"):
        training_space(
            np.arange(4.0)[:, None], ["a", "a", "b", "c"], [0, 1, 1, 2], [1.0], FeatureSpec(("x",))
        )


def test_weights_scale_importances_to_one_and_drop_negative_ones() -> None:
    weights = column_weights({"a": 50.0, "b": -3.0, "v": 25.0}, ["a", "b", "v", "v"])
    np.testing.assert_allclose(weights, [1.0, 0.0, 0.5, 0.5])


def test_a_pixel_of_a_class_never_seen_in_training_is_outside_the_aoa() -> None:
    features = FeatureSpec(("x",), (CategoricalFeature("veg", (1, 2), ("a", "b")),))
    X = np.column_stack([np.arange(4.0), [1, 0, 1, 0], [0, 1, 0, 1]])
    space = training_space(X, list("abcd"), [0, 1, 2, 3], [1.0, 1.0, 1.0], features)
    values = {"x": np.array([[1.0, 1.0, 1.0]]), "veg": np.array([[1, 3, 255]], dtype=np.uint8)}
    block = applicability_block(space, features, values, np.array([[True, True, True]]))
    assert block.aoa.tolist() == [[1, 0, AOA_NODATA]]
    assert np.isnan(block.di[0, 2])
