"""Chunked prediction over a real cube of the synthetic plateau on a two-process Dask cluster."""

from __future__ import annotations

import shutil
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest
import rasterio
import zarr
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from scipy.ndimage import distance_transform_edt
from sklearn.ensemble import RandomForestRegressor
from typer.testing import CliRunner

from tpgrid.artifact import ModelArtifact, save_model
from tpgrid.carryover import mark_chunk_done
from tpgrid.cli import app
from tpgrid.core import _kernels
from tpgrid.core.applicability import dissimilarity, training_space
from tpgrid.core.blocks import (
    BASE_LAYERS,
    MEAN_VARIANCE,
    UNSEEN_NODATA,
    PixelModel,
    PredictOptions,
    model_input,
    predict_block,
)
from tpgrid.core.bootstrap import inbag_counts
from tpgrid.core.features import CATEGORICAL_NODATA, CategoricalFeature, FeatureSpec
from tpgrid.core.forest import pack_forest, warm_up_kernels
from tpgrid.core.intervals import IntervalCalibration
from tpgrid.core.jackknife import ij_variance
from tpgrid.core.quantiles import forest_quantiles, leaf_membership
from tpgrid.cube import VALID, build_cube, open_cube
from tpgrid.engine import ChunkJob
from tpgrid.errors import (
    ArtifactError,
    ChunkingError,
    ConfigError,
    FeatureMismatchError,
    OutputExistsError,
    PredictionError,
)
from tpgrid.grid import TargetGrid, load_grid_spec
from tpgrid.integrity import file_record
from tpgrid.outputs import ATTR_RUN, RUN_GROUP, layer_layouts, open_prediction
from tpgrid.predict import (
    KernelWarmUp,
    load_models,
    predict_chunk,
    predict_cube,
    verify_prediction,
)
from tpgrid.sources import load_catalog
from tpgrid.store import create_layout
from tpgrid.synthetic import PlateauFiles, write_plateau

pytestmark = pytest.mark.cluster

N_TREES = 30
#: The models fitted here are bare forests: mean, variance, sd and the unseen flag only
#: (the uncertainty section below predicts the other layers).
MEAN_ONLY = MEAN_VARIANCE
BARE_MODEL_FLAGS = ["--quantile", "0", "--no-interval", "--no-applicability"]


@dataclass(frozen=True)
class Plateau:
    files: PlateauFiles
    cube: Path
    grid: TargetGrid
    covariates: dict[str, np.ndarray]  # every cube variable read for the models, (rows, cols)
    valid: np.ndarray
    sites: tuple[np.ndarray, np.ndarray]  # rows, cols of the pixels holding a site

    def truth(self, element: str) -> np.ndarray:
        with rasterio.open(self.files.truth(element)) as src:
            return np.asarray(src.read(1))


@pytest.fixture(scope="module")
def plateau(tmp_path_factory: pytest.TempPathFactory) -> Plateau:
    root = tmp_path_factory.mktemp("plateau")
    files = write_plateau(root / "plateau", "small", seed=0)
    grid = TargetGrid.from_spec(load_grid_spec(files.grid))
    cube = root / "cube.zarr"
    build_cube(load_catalog(files.catalog), grid, cube)
    ds = open_cube(cube)
    kinds = {name: ds[name].attrs.get("tpgrid:kind") for name in ds.data_vars}
    covariates = {name: ds[name].values for name, kind in kinds.items() if kind}
    valid = ds[VALID].values == 1
    table = pd.read_csv(files.sites)
    rows, cols, inside = grid.pixel_index(table["lon"], table["lat"])
    pixels = np.unique(np.column_stack([rows[inside], cols[inside]]), axis=0)
    pixels = pixels[valid[pixels[:, 0], pixels[:, 1]]]
    return Plateau(files, cube, grid, covariates, valid, (pixels[:, 0], pixels[:, 1]))


def feature_spec(plateau: Plateau) -> FeatureSpec:
    """Every continuous cube variable, and each categorical one with the classes at the sites."""
    ds = open_cube(plateau.cube)
    continuous, categorical = [], []
    for name in sorted(plateau.covariates):
        if ds[name].attrs["tpgrid:kind"] == "continuous":
            continuous.append(name)
            continue
        seen = np.unique(plateau.covariates[name][plateau.sites])
        codes = tuple(int(c) for c in seen if c != CATEGORICAL_NODATA)
        classes = ds[name].attrs["tpgrid:classes"]
        categorical.append(CategoricalFeature(name, codes, tuple(classes[str(c)] for c in codes)))
    return FeatureSpec(tuple(continuous), tuple(categorical))


def fit_model(
    plateau: Plateau, element: str, n_trees: int = N_TREES, spec: FeatureSpec | None = None
) -> ModelArtifact:
    """A forest fitted on the truth raster at the site pixels, packed into an artifact."""
    spec = spec or feature_spec(plateau)
    X, _ = spec.matrix({name: values[plateau.sites] for name, values in plateau.covariates.items()})
    y = plateau.truth(element)[plateau.sites]
    forest = RandomForestRegressor(n_trees, max_features=1 / 3, random_state=0).fit(X, y)
    # A grouped-CV R² where the fit records it (the run records it too): Mo's a poor one.
    record = {"cv": {"grouped": {"r2": -0.08 if element == "Mo" else 0.5}}}
    return ModelArtifact(element, pack_forest(forest), spec, record=record)


@pytest.fixture(scope="module")
def models(plateau: Plateau) -> list[ModelArtifact]:
    return [fit_model(plateau, element) for element in plateau.files.elements]


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    warm_up_kernels()  # fill numba's disk cache first: the workers then load it from there
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@dataclass(frozen=True)
class Prediction:
    path: Path
    report: Any
    layers: Mapping[str, np.ndarray]  # "Fe_mean" -> (rows, cols)


@pytest.fixture(scope="module")
def prediction(
    plateau: Plateau,
    models: list[ModelArtifact],
    client: Client,
    tmp_path_factory: pytest.TempPathFactory,
) -> Prediction:
    path = tmp_path_factory.mktemp("prediction") / "maps.zarr"
    report = predict_cube(plateau.cube, models, path, options=MEAN_ONLY)
    ds, _ = open_prediction(path)
    return Prediction(path, report, {name: ds[name].values for name in ds.data_vars})


def whole_map(plateau: Plateau, model: ModelArtifact) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the forest on every valid pixel at once (unseen classes NaN)."""
    X, unseen = model.features.matrix(
        {name: plateau.covariates[name][plateau.valid] for name in model.features.variables}
    )
    X[unseen] = np.nan
    return model.forest.predict_mean_variance(X)


# --- agreement ---------------------------------------------------------------------------


@pytest.mark.slow
def test_chunked_maps_equal_the_forest_applied_to_the_whole_map(
    plateau: Plateau, models: list[ModelArtifact], prediction: Prediction
) -> None:
    for model in models:
        mean, variance = whole_map(plateau, model)
        layer = prediction.layers
        assert np.array_equal(
            layer[f"{model.element}_mean"][plateau.valid], mean.astype(np.float32), equal_nan=True
        )
        assert np.array_equal(
            layer[f"{model.element}_variance"][plateau.valid],
            variance.astype(np.float32),
            equal_nan=True,
        )


@pytest.mark.slow
def test_maps_agree_with_the_truth_rasters(plateau: Plateau, prediction: Prediction) -> None:
    scores = {}
    for element in plateau.files.elements:
        truth = plateau.truth(element)
        mean = prediction.layers[f"{element}_mean"]
        both = np.isfinite(mean) & np.isfinite(truth)
        error = mean[both] - truth[both]
        r2 = 1 - np.mean(error**2) / np.var(truth[both])
        scores[element] = (float(np.sqrt(np.mean(error**2))), float(r2))
    # A forest fitted on the truth at 120 site pixels recovers 0.76–0.85 of its variance over
    # the whole map (slope and lithology patches vary at scales the sites cannot all sample);
    # a shifted or flipped map would score near or below zero.
    assert all(r2 > 0.7 for _, r2 in scores.values()), scores


@pytest.mark.slow
def test_variance_is_highest_far_from_the_sites(plateau: Plateau, prediction: Prediction) -> None:
    no_site = np.ones(plateau.grid.shape, dtype=bool)
    no_site[plateau.sites] = False
    distance = distance_transform_edt(no_site)[plateau.valid]
    near, far = distance <= np.quantile(distance, 0.25), distance >= np.quantile(distance, 0.75)
    ratios = {}
    for element in plateau.files.elements:
        relative_sd = (prediction.layers[f"{element}_sd"] / prediction.layers[f"{element}_mean"])[
            plateau.valid
        ]
        ratios[element] = np.nanmedian(relative_sd[far]) / np.nanmedian(relative_sd[near])
    # Higher far from the sites for every element (1.04-1.14 on this plateau, where slope and
    # lithology, which vary everywhere, drive most of the truth), 5 % or more for most.
    assert all(ratio > 1.02 for ratio in ratios.values()), ratios
    assert np.median(list(ratios.values())) > 1.05, ratios


@pytest.mark.slow
def test_sd_is_the_square_root_of_the_variance(prediction: Prediction) -> None:
    sd, variance = prediction.layers["Zn_sd"], prediction.layers["Zn_variance"]
    np.testing.assert_allclose(sd, np.sqrt(variance), rtol=1e-6)


@pytest.mark.slow
def test_pixels_outside_the_valid_mask_have_no_prediction(
    plateau: Plateau, prediction: Prediction
) -> None:
    assert (~plateau.valid).sum() > 1000
    for layer in ("mean", "variance", "sd"):
        assert np.isnan(prediction.layers[f"Fe_{layer}"][~plateau.valid]).all()
    assert (prediction.layers["Fe_unseen"][~plateau.valid] == UNSEEN_NODATA).all()


@pytest.mark.slow
def test_pixels_with_a_class_unseen_in_training_are_flagged_and_nan(
    plateau: Plateau, models: list[ModelArtifact], prediction: Prediction
) -> None:
    fe = models[0]
    _, unseen = fe.features.matrix(
        {name: plateau.covariates[name][plateau.valid] for name in fe.features.variables}
    )
    flag = prediction.layers["Fe_unseen"][plateau.valid]
    assert unseen.sum() > 0
    assert np.array_equal(flag == 1, unseen)
    assert np.isnan(prediction.layers["Fe_mean"][plateau.valid][unseen]).all()
    assert np.isfinite(prediction.layers["Fe_mean"][plateau.valid][~unseen]).all()
    assert prediction.report.elements[0].pixels_unseen == unseen.sum()


def test_unseen_policy_predict_fills_those_pixels(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    predict_cube(
        plateau.cube,
        models[:1],
        tmp_path / "maps.zarr",
        options=replace(MEAN_ONLY, unseen="predict"),
    )
    ds, run = open_prediction(tmp_path / "maps.zarr")
    unseen = ds["Fe_unseen"].values == 1
    assert run["options"]["unseen"] == "predict"
    assert unseen.sum() > 0
    assert np.isfinite(ds["Fe_mean"].values[unseen]).all()


def test_unknown_unseen_policy_is_refused(
    plateau: Plateau, models: list[ModelArtifact], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="'zero' is not one of"):
        predict_cube(
            plateau.cube,
            models[:1],
            tmp_path / "maps.zarr",
            options=replace(MEAN_ONLY, unseen="zero"),
        )


def test_predict_block_predicts_only_valid_pixels() -> None:
    spec = FeatureSpec(("a",))
    X = np.arange(40, dtype=np.float32)[:, None]
    forest = pack_forest(RandomForestRegressor(5, random_state=0).fit(X, X[:, 0] * 2))
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    valid = a % 3 != 0
    X, unseen = model_input(spec, {"a": a[valid]}, "predict")
    block = predict_block(PixelModel(forest), X, unseen, valid, MEAN_ONLY)
    expected, _ = forest.predict_mean_variance(a[valid][:, None])
    assert set(block.layers) == set(BASE_LAYERS)
    assert np.array_equal(block.layers["mean"][valid], expected.astype(np.float32))
    assert np.isnan(block.layers["mean"][~valid]).all()
    assert (block.layers["unseen"][~valid] == UNSEEN_NODATA).all()
    assert (block.layers["unseen"][valid] == 0).all()
    assert block.predicted == valid.sum()


def test_elements_with_different_features_in_one_chunk_task_match_the_whole_map(
    plateau: Plateau, client: Client, tmp_path: Path
) -> None:
    # One task predicts every element of a chunk, building X once per distinct feature spec.
    full = feature_spec(plateau)
    continuous = FeatureSpec(full.continuous[:5])
    models = [fit_model(plateau, "Fe", 20), fit_model(plateau, "Mn", 20, spec=continuous)]
    report = predict_cube(plateau.cube, models, tmp_path / "maps.zarr", options=MEAN_ONLY)
    assert report.chunks_computed == 2 * len(list(plateau.grid.windows()))
    ds, _ = open_prediction(tmp_path / "maps.zarr")
    for model in models:
        mean, _ = whole_map(plateau, model)
        got = ds[f"{model.element}_mean"].values[plateau.valid]
        assert np.array_equal(got, mean.astype(np.float32), equal_nan=True)
    # Mn reads no categorical layer: its map has no unseen-class holes, Fe's has.
    assert np.isfinite(ds["Mn_mean"].values[plateau.valid]).all()
    assert np.isnan(ds["Fe_mean"].values[plateau.valid]).any()


def test_a_retried_chunk_task_skips_the_elements_already_done(
    plateau: Plateau, models: list[ModelArtifact], tmp_path: Path
) -> None:
    # A task whose worker died after writing Fe is run again: Fe is not predicted twice.
    staging = tmp_path / "staging.zarr"
    layouts = {
        name: layout
        for model in models[:2]
        for name, layout in layer_layouts(model.element, N_TREES, MEAN_ONLY).items()
    }
    create_layout(staging, plateau.grid, layouts)
    window = next(iter(plateau.grid.windows()))
    fe, mn = models[0], models[1]
    nothing_stored = dict.fromkeys(BASE_LAYERS)
    mark_chunk_done(staging, fe.element, window, (7, 1), nothing_stored)
    job = ChunkJob(
        plateau.cube,
        staging,
        window,
        ((fe.element, fe.features), (mn.element, mn.features)),
        MEAN_ONLY,
    )
    counts = predict_chunk(job, {fe.element: fe.pixel_model, mn.element: mn.pixel_model})
    key = window.key
    predicted = int(plateau.valid[window.rows, window.cols].sum())
    assert counts[0] == (fe.element, key, 7, 1, nothing_stored)  # from the marker
    assert counts[1][:2] == (mn.element, key)
    assert 0 < counts[1][2] <= predicted
    mn_file = staging / f"{mn.element}_mean" / "c" / "0" / "0"
    assert counts[1][4]["mean"] == file_record(mn_file)  # recorded as written
    fe_mean = zarr.open_array(staging / f"{fe.element}_mean", mode="r")[window.rows, window.cols]
    assert np.isnan(fe_mean).all()  # never written
    mn_mean = zarr.open_array(staging / f"{mn.element}_mean", mode="r")[window.rows, window.cols]
    assert np.isfinite(mn_mean).sum() == counts[1][2]


# --- the output group ----------------------------------------------------------------------


@pytest.mark.slow
def test_output_is_on_the_cube_grid_with_a_cf_grid_mapping(
    plateau: Plateau, prediction: Prediction
) -> None:
    ds, _ = open_prediction(prediction.path)
    cube = open_cube(plateau.cube)
    assert np.array_equal(ds["x"].values, cube["x"].values)
    assert np.array_equal(ds["y"].values, cube["y"].values)
    assert ds["spatial_ref"].attrs["crs_wkt"] == cube["spatial_ref"].attrs["crs_wkt"]
    assert ds["Fe_mean"].encoding["grid_mapping"] == "spatial_ref"
    assert ds["Fe_mean"].encoding["chunks"] == (plateau.grid.spec.chunk,) * 2
    assert ds["Fe_mean"].dtype == np.float32
    assert ds["Fe_unseen"].dtype == np.uint8


@pytest.mark.slow
def test_run_record_holds_model_hashes_and_per_chunk_inputs(
    plateau: Plateau, models: list[ModelArtifact], prediction: Prediction
) -> None:
    _, run = open_prediction(prediction.path)
    assert {e: m["model_hash"] for e, m in run["models"].items()} == {
        m.element: m.model_hash for m in models
    }
    assert {e: m["cv_r2"] for e, m in run["models"].items()} == {
        m.element: m.record["cv"]["grouped"]["r2"] for m in models
    }
    assert run["models"]["Mo"]["cv_r2"] == -0.08
    keys = {w.key for w in plateau.grid.windows()}
    assert set(run["chunk_inputs"]["Fe"]) == keys
    assert run["chunk_inputs"]["Fe"] != run["chunk_inputs"]["Zn"]
    assert run["run_id"] == prediction.report.run_id


@pytest.mark.slow
def test_rerun_with_the_same_inputs_writes_nothing(
    plateau: Plateau, models: list[ModelArtifact], prediction: Prediction, client: Client
) -> None:
    chunk = next((prediction.path / "Fe_mean").rglob("c/*/*"))
    before = chunk.stat().st_mtime_ns
    report = predict_cube(plateau.cube, models, prediction.path, options=MEAN_ONLY)
    assert report.up_to_date
    assert report.run_id == prediction.report.run_id
    assert chunk.stat().st_mtime_ns == before


def test_a_changed_model_repredicts_only_its_element(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    out = tmp_path / "maps.zarr"
    predict_cube(plateau.cube, models[:2], out, options=MEAN_ONLY)
    untouched = sorted((out / f"{models[0].element}_mean").rglob("c/*/*"))
    inodes = [p.stat().st_ino for p in untouched]
    refitted = fit_model(plateau, models[1].element, n_trees=N_TREES + 5)
    report = predict_cube(plateau.cube, [models[0], refitted], out, options=MEAN_ONLY)
    n_chunks = len(list(plateau.grid.windows()))
    assert (report.chunks_computed, report.chunks_total) == (n_chunks, 2 * n_chunks)
    # The first element's chunks are the very same files (hard links), not rewrites.
    assert [p.stat().st_ino for p in untouched] == inodes
    fresh = tmp_path / "fresh.zarr"
    predict_cube(plateau.cube, [models[0], refitted], fresh, options=MEAN_ONLY)
    assert tree_bytes(out) == tree_bytes(fresh)


def test_a_cube_change_in_one_chunk_repredicts_only_that_chunk(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    cube = tmp_path / "cube.zarr"
    shutil.copytree(plateau.cube, cube)
    out = tmp_path / "maps.zarr"
    predict_cube(cube, models[:2], out, options=MEAN_ONLY)
    # Raise the NDVI of chunk (1, 1) and record its new hash, as a cube update would.
    ndvi = zarr.open_array(cube / "ndvi", mode="r+", zarr_format=3)
    window = next(w for w in plateau.grid.windows() if w.index == (1, 1))
    ndvi[window.rows, window.cols] = ndvi[window.rows, window.cols] + 0.05
    group = zarr.open_group(cube, mode="r+", zarr_format=3)
    hashes = dict(group.attrs["tpgrid:chunk_hashes"])
    hashes["ndvi"] = hashes["ndvi"] | {"1.1": "changed"}
    group.attrs["tpgrid:chunk_hashes"] = hashes
    zarr.consolidate_metadata(cube, zarr_format=3)
    report = predict_cube(cube, models[:2], out, options=MEAN_ONLY)
    assert report.chunks_computed == 2  # chunk (1, 1) of each element
    fresh = tmp_path / "fresh.zarr"
    predict_cube(cube, models[:2], fresh, options=MEAN_ONLY)
    assert tree_bytes(out) == tree_bytes(fresh)


def chunk_bytes(root: Path) -> dict[str, bytes]:
    """Every chunk file under ``root`` by relative path (metadata left out: it holds dates)."""
    return {k: v for k, v in tree_bytes(root).items() if not k.endswith("zarr.json")}


def test_a_deleted_or_changed_prediction_chunk_is_predicted_again_alone(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    out = tmp_path / "maps.zarr"
    first = predict_cube(plateau.cube, models[:2], out, options=MEAN_ONLY)
    before = chunk_bytes(out)
    fe, mn = models[0].element, models[1].element
    (out / f"{fe}_mean" / "c" / "1" / "1").unlink()
    data = bytearray((out / f"{mn}_sd" / "c" / "0" / "2").read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / f"{mn}_sd" / "c" / "0" / "2").write_bytes(bytes(data))
    assert {str(d.path.relative_to(out)) for d in verify_prediction(out)} == {
        f"{fe}_mean/c/1/1",
        f"{mn}_sd/c/0/2",
    }
    # The same inputs: "nothing to do" were it not for the damage.
    report = predict_cube(plateau.cube, models[:2], out, options=MEAN_ONLY)
    assert report.run_id == first.run_id
    assert not report.up_to_date
    assert report.chunks_computed == 2  # chunk (1, 1) of one element, (0, 2) of the other
    assert {str(d.path.relative_to(out)): d.problem for d in report.repaired} == {
        f"{fe}_mean/c/1/1": "missing; its element chunk predicted again",
        f"{mn}_sd/c/0/2": "content differs from its SHA-256 recorded when written; its "
        "element chunk predicted again",
    }
    assert chunk_bytes(out) == before
    assert verify_prediction(out) == []
    assert predict_cube(plateau.cube, models[:2], out, options=MEAN_ONLY).up_to_date


def test_a_damaged_chunk_is_not_carried_over_into_a_new_run(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    out = tmp_path / "maps.zarr"
    predict_cube(plateau.cube, models[:2], out, options=MEAN_ONLY)
    (out / f"{models[0].element}_unseen" / "c" / "2" / "0").unlink()
    # A refitted second model: a new run, carrying the first element's chunks over.
    refitted = fit_model(plateau, models[1].element, n_trees=N_TREES + 5)
    report = predict_cube(plateau.cube, [models[0], refitted], out, options=MEAN_ONLY)
    n_chunks = len(list(plateau.grid.windows()))
    assert report.chunks_computed == n_chunks + 1
    assert [d.path for d in report.repaired] == [
        out / f"{models[0].element}_unseen" / "c" / "2" / "0"
    ]
    fresh = tmp_path / "fresh.zarr"
    predict_cube(plateau.cube, [models[0], refitted], fresh, options=MEAN_ONLY)
    assert chunk_bytes(out) == chunk_bytes(fresh)


def test_leftovers_of_killed_runs_are_removed_and_named(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    out = tmp_path / "maps.zarr"
    predict_cube(plateau.cube, models[:1], out, options=MEAN_ONLY)
    for name in (".maps.zarr.staging-0badc0de0badc0de", ".maps.zarr.retired-0badc0de"):
        (tmp_path / name / "_tpgrid_done").mkdir(parents=True)
    report = predict_cube(plateau.cube, models[:1], out, options=MEAN_ONLY)
    assert report.up_to_date
    assert sorted((d.path.name, d.problem) for d in report.repaired) == [
        (".maps.zarr.retired-0badc0de", "left by an interrupted run; removed"),
        (".maps.zarr.staging-0badc0de0badc0de", "left by an interrupted run; removed"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.zarr"]


def test_verify_prediction_names_a_stray_file_and_an_unrecorded_group(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    out = tmp_path / "maps.zarr"
    predict_cube(plateau.cube, models[:1], out, options=MEAN_ONLY)
    stray = out / f"{models[0].element}_variance" / "c" / "9" / "9"
    stray.parent.mkdir()
    stray.write_bytes(b"stray")
    assert [(d.path, d.problem) for d in verify_prediction(out)] == [
        (stray, "a file is here where none was written")
    ]
    group = zarr.open_group(out, mode="r+", zarr_format=3)
    del group.attrs["tpgrid:chunk_files"]  # as an older tpgrid wrote it
    zarr.consolidate_metadata(out, zarr_format=3)
    (damage,) = verify_prediction(out)
    assert (damage.path, "cannot be verified" in damage.problem) == (out, True)
    # Nothing can be verified, so every chunk is predicted again, and that is said once.
    report = predict_cube(plateau.cube, models[:1], out, options=MEAN_ONLY)
    assert report.chunks_computed == report.chunks_total
    assert [(d.path, "every chunk predicted again" in d.problem) for d in report.repaired] == [
        (out, True)
    ]
    assert verify_prediction(out) == []


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path: for byte-for-byte comparisons of groups."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_output_holding_another_run_is_refused_unless_overwrite(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    out = tmp_path / "maps.zarr"
    predict_cube(plateau.cube, models[:1], out, options=MEAN_ONLY)
    with pytest.raises(OutputExistsError, match=r"another prediction run.*--overwrite"):
        predict_cube(plateau.cube, models[1:2], out, options=MEAN_ONLY)
    predict_cube(plateau.cube, models[1:2], out, overwrite=True, options=MEAN_ONLY)
    ds, run = open_prediction(out)
    assert list(run["models"]) == [models[1].element]
    assert f"{models[0].element}_mean" not in ds


def test_output_path_holding_other_files_is_refused(
    plateau: Plateau, models: list[ModelArtifact], tmp_path: Path
) -> None:
    out = tmp_path / "maps.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="something else"):
        predict_cube(plateau.cube, models[:1], out, options=MEAN_ONLY)
    assert (out / "notes.txt").read_text() == "mine"


def test_failed_run_leaves_neither_output_nor_staging(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    cube = tmp_path / "cube.zarr"
    shutil.copytree(plateau.cube, cube)
    next((cube / "dem").rglob("c/*/*")).write_bytes(b"not a zstd frame")
    with pytest.raises(RuntimeError):  # the decompressor's error, raised on the worker
        predict_cube(cube, models[:1], tmp_path / "maps.zarr", options=MEAN_ONLY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.zarr"]


def test_a_failed_chunk_task_names_its_elements_chunk_and_stores(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    cube = tmp_path / "cube.zarr"
    shutil.copytree(plateau.cube, cube)
    broken = next((cube / "dem").rglob("c/*/*"))  # c/{i}/{j}
    broken.write_bytes(b"not a zstd frame")
    with pytest.raises(RuntimeError) as failure:  # its type kept: the decompressor's error
        predict_cube(cube, models[:2], tmp_path / "maps.zarr", options=MEAN_ONLY)
    message = "".join(traceback.format_exception_only(failure.value))
    elements = f"{models[0].element}, {models[1].element}"
    assert f"prediction task of {elements} for chunk {broken.parent.name}.{broken.name} " in message
    assert f"of cube {cube}, writing {tmp_path / 'maps.zarr'}" in message


# --- bad input -----------------------------------------------------------------------------


def test_model_needing_a_variable_the_cube_lacks_is_refused(
    plateau: Plateau, models: list[ModelArtifact], tmp_path: Path
) -> None:
    fe = models[0]
    renamed = ("elevation", *fe.features.continuous[1:])
    model = replace(fe, features=replace(fe.features, continuous=renamed))
    with pytest.raises(FeatureMismatchError, match="model Fe needs variable 'elevation'"):
        predict_cube(plateau.cube, [model], tmp_path / "maps.zarr", options=MEAN_ONLY)
    assert not (tmp_path / "maps.zarr").exists()


def test_model_with_another_class_table_is_refused(
    plateau: Plateau, models: list[ModelArtifact], tmp_path: Path
) -> None:
    fe = models[0]
    vegetation = fe.features.categorical[-1]
    assert vegetation.variable == "vegetation"
    shuffled = replace(vegetation, names=vegetation.names[::-1])
    features = replace(fe.features, categorical=(*fe.features.categorical[:-1], shuffled))
    with pytest.raises(FeatureMismatchError, match=r"'vegetation'.*class tables differ"):
        predict_cube(
            plateau.cube,
            [replace(fe, features=features)],
            tmp_path / "maps.zarr",
            options=MEAN_ONLY,
        )


def test_cube_variable_chunked_off_the_grid_is_refused(
    plateau: Plateau, models: list[ModelArtifact], tmp_path: Path
) -> None:
    cube = tmp_path / "cube.zarr"
    shutil.copytree(plateau.cube, cube)
    old = zarr.open_array(cube / "ph", mode="r")
    data, attrs = old[:], dict(old.attrs)
    shutil.rmtree(cube / "ph")
    new = zarr.create_array(
        cube / "ph",
        shape=data.shape,
        chunks=(100, 100),
        dtype=data.dtype,
        attributes=attrs,
        dimension_names=("y", "x"),
    )
    new[:] = data
    zarr.consolidate_metadata(cube)
    with pytest.raises(ChunkingError, match=r"'ph' is .* in chunks of \(100, 100\).*rebuild"):
        predict_cube(cube, models[:1], tmp_path / "maps.zarr", options=MEAN_ONLY)


def test_two_models_for_one_element_are_refused(
    plateau: Plateau, models: list[ModelArtifact], tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError, match="more than one model for \\['Fe'\\]"):
        predict_cube(
            plateau.cube, [models[0], models[0]], tmp_path / "maps.zarr", options=MEAN_ONLY
        )


def test_models_are_loaded_from_a_directory_of_element_folders(
    models: list[ModelArtifact], tmp_path: Path
) -> None:
    for model in models[:2]:
        save_model(model, tmp_path / model.element)
    loaded = load_models(tmp_path)
    assert [m.element for m in loaded] == ["Fe", "Mn"]
    assert [m.model_hash for m in loaded] == [m.model_hash for m in models[:2]]


def test_directory_without_models_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"no model artifact.*tpgrid fit"):
        load_models(tmp_path)


# --- the cluster ---------------------------------------------------------------------------


class TaskSizes(SchedulerPlugin):
    """Records the pickled size of every prediction task the scheduler receives."""

    name = "test-task-sizes"

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}

    def update_graph(self, scheduler: Any, *, tasks: Any, **kwargs: Any) -> None:
        for key in tasks:
            state = scheduler.tasks.get(key)
            if str(key).startswith("tpgrid-predict-") and state is not None:
                self.sizes[str(key)] = len(cloudpickle.dumps(state.run_spec))


def largest_task(client: Client) -> int:
    def pop(dask_scheduler: Any) -> dict[str, int]:
        plugin = dask_scheduler.plugins[TaskSizes.name]
        sizes, plugin.sizes = plugin.sizes, {}
        return sizes

    sizes = client.run_on_scheduler(pop)
    assert sizes
    return max(sizes.values())


def test_task_size_does_not_grow_with_the_forest(
    plateau: Plateau, client: Client, tmp_path: Path
) -> None:
    client.register_plugin(TaskSizes())
    small, large = fit_model(plateau, "Cu", n_trees=3), fit_model(plateau, "Cu", n_trees=150)
    predict_cube(plateau.cube, [small], tmp_path / "small.zarr", options=MEAN_ONLY)
    small_task = largest_task(client)
    predict_cube(plateau.cube, [large], tmp_path / "large.zarr", options=MEAN_ONLY)
    large_task = largest_task(client)
    assert large.forest.nbytes > 50 * small.forest.nbytes
    assert abs(large_task - small_task) <= 16
    assert large_task < large.forest.nbytes / 50


def _kernel_state() -> tuple[int, int, int]:
    """Signatures compiled, loaded from numba's disk cache, and compiled afresh, this process."""
    kernel = _kernels.forest_mean_variance
    stats = kernel.stats
    return len(kernel.signatures), sum(stats.cache_hits.values()), sum(stats.cache_misses.values())


@pytest.mark.slow
def test_a_joining_worker_loads_the_kernel_from_the_disk_cache_before_any_task() -> None:
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as fresh,
    ):
        fresh.register_plugin(KernelWarmUp())
        states = fresh.run(_kernel_state)
    assert list(states.values()) == [(1, 1, 0)]


@pytest.mark.slow
def test_chunks_reuse_the_warmed_up_kernel(prediction: Prediction, client: Client) -> None:
    states = client.run(_kernel_state)
    assert len(states) == 2
    assert all(signatures == 1 for signatures, _, _ in states.values())


# --- the command ---------------------------------------------------------------------------


def test_cli_predicts_and_publishes(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    save_model(models[0], tmp_path / "models" / models[0].element)
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--cube",
            str(plateau.cube),
            "--models",
            str(tmp_path / "models"),
            "--out",
            str(tmp_path / "maps.zarr"),
            "--publish",
            str(tmp_path / "published"),
            "--scheduler-address",
            client.scheduler.address,
            *BARE_MODEL_FLAGS,
        ],
    )
    assert result.exit_code == 0, result.output
    _, run = open_prediction(tmp_path / "maps.zarr")
    assert list(run["models"]) == ["Fe"]
    assert (tmp_path / "published" / "Fe_mean.tif").is_file()
    assert (tmp_path / "published" / "item.json").is_file()


def test_cli_reports_a_feature_mismatch_without_a_traceback(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    fe = models[0]
    renamed = replace(fe.features, continuous=("elevation", *fe.features.continuous[1:]))
    save_model(replace(fe, features=renamed), tmp_path / "Fe")
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--cube",
            str(plateau.cube),
            "--models",
            str(tmp_path / "Fe"),
            "--out",
            str(tmp_path / "maps.zarr"),
            "--scheduler-address",
            client.scheduler.address,
            *BARE_MODEL_FLAGS,
        ],
    )
    assert result.exit_code == 2
    assert "needs variable 'elevation'" in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_layers_a_model_cannot_make_before_any_cluster(
    plateau: Plateau, models: list[ModelArtifact], tmp_path: Path
) -> None:
    save_model(models[0], tmp_path / "models" / "Fe")
    args = ["predict", "--cube", str(plateau.cube), "--models", str(tmp_path / "models")]
    # No cluster option: a cluster would start (and say so) only after the check.
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "maps.zarr")])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "Fe: leaf membership (quantiles), interval calibration (interval)" in said
    assert "`tpgrid fit`" in said
    assert "Traceback" not in result.output
    assert not (tmp_path / "maps.zarr").exists()


def test_a_run_record_of_another_run_is_damage_and_the_group_no_prediction(
    plateau: Plateau, models: list[ModelArtifact], client: Client, tmp_path: Path
) -> None:
    out = tmp_path / "maps.zarr"
    predict_cube(plateau.cube, models[:1], out, options=MEAN_ONLY)
    zarr.open_group(out / RUN_GROUP, mode="r+", zarr_format=3).attrs["run_id"] = "0" * 64
    assert [(d.path, d.problem) for d in verify_prediction(out)] == [
        (out / RUN_GROUP, f"missing, or not the run the group's {ATTR_RUN} names")
    ]
    with pytest.raises(PredictionError, match=RUN_GROUP):
        open_prediction(out)
    # Without a record it is not taken for this run's maps: replaced only when asked.
    with pytest.raises(OutputExistsError, match="something else"):
        predict_cube(plateau.cube, models[:1], out, options=MEAN_ONLY)
    report = predict_cube(plateau.cube, models[:1], out, overwrite=True, options=MEAN_ONLY)
    assert report.chunks_computed == report.chunks_total
    assert verify_prediction(out) == []


# --- the uncertainty layers ------------------------------------------------------------------


ALL_LAYERS = PredictOptions(relative_width=True, standard_error=True)


@dataclass(frozen=True)
class UncertainModel:
    artifact: ModelArtifact
    estimator: Any  # quantile-forest's RandomForestQuantileRegressor, the reference
    X_train: np.ndarray
    quantile_forest: Any  # its first QUANTILE_TREES trees: the maps' quantile forest


#: The maps' quantile forest is the forest's first this many trees (the calibration says so).
QUANTILE_TREES = 20


@pytest.fixture(scope="module")
def uncertain(plateau: Plateau) -> UncertainModel:
    """A model of Fe with every uncertainty part, each made by its own core function, from a
    quantile-forest forest (its trees are scikit-learn's: quantile-forest is the reference)."""
    from quantile_forest import RandomForestQuantileRegressor

    spec = feature_spec(plateau)
    X, _ = spec.matrix({name: values[plateau.sites] for name, values in plateau.covariates.items()})
    y = plateau.truth("Fe")[plateau.sites].astype(np.float64)

    def quantile_forest(n_trees: int) -> Any:
        return RandomForestQuantileRegressor(
            n_estimators=n_trees,
            max_features=1 / 3,
            min_samples_leaf=3,
            max_samples_leaf=None,
            random_state=0,
        ).fit(X, y)

    estimator = quantile_forest(N_TREES)
    forest = pack_forest(estimator)
    sites = np.arange(y.size)
    space = training_space(X, sites, sites % 3, np.linspace(1.0, 0.2, X.shape[1]), spec)
    edge = float(np.median(space.train_di))
    calibration = IntervalCalibration(
        0.9, "quantile", (0.05, 0.95), (edge,), (-150.0, 900.0), (30, 30), trees=QUANTILE_TREES
    )
    artifact = ModelArtifact(
        "Fe",
        forest,
        spec,
        {"cv": {"grouped": {"r2": 0.5}}},
        membership=leaf_membership(estimator, X, y, forest),
        inbag=inbag_counts(estimator, y.size),
        space=space,
        calibration=calibration,
    )
    return UncertainModel(artifact, estimator, X, quantile_forest(QUANTILE_TREES))


@pytest.mark.slow
def test_every_uncertainty_layer_equals_its_reference_over_the_whole_map(
    plateau: Plateau, uncertain: UncertainModel, client: Client, tmp_path: Path
) -> None:
    model = uncertain.artifact
    assert model.membership is not None
    assert model.space is not None
    assert model.calibration is not None
    assert model.inbag is not None
    report = predict_cube(plateau.cube, [model], tmp_path / "maps.zarr", options=ALL_LAYERS)
    ds, run = open_prediction(tmp_path / "maps.zarr")
    assert set(ds.data_vars) == {f"Fe_{layer}" for layer in ALL_LAYERS.layers()}
    assert run["models"]["Fe"]["interval"] == model.calibration.to_json()
    got = {layer: ds[f"Fe_{layer}"].values[plateau.valid] for layer in ALL_LAYERS.layers()}
    raw, unseen = model.features.matrix(
        {name: plateau.covariates[name][plateau.valid] for name in model.features.variables}
    )
    X = raw.copy()
    X[unseen] = np.nan
    assert unseen.any()
    assert report.elements[0].pixels_unseen == unseen.sum()

    quantiles = forest_quantiles(
        model.forest, model.membership, X, [0.05, 0.5, 0.95], trees=QUANTILE_TREES
    )
    for k, layer in enumerate(("q05", "q50", "q95")):
        assert np.array_equal(got[layer], quantiles[:, k].astype(np.float32), equal_nan=True)
    # quantile-forest's own predict (Meinshausen's weights, tpgrid's default), on pixels seen
    # in training (its forest cannot take NaN).
    sample = np.flatnonzero(~unseen)[:: max(1, int((~unseen).sum()) // 400)]
    reference = uncertain.quantile_forest.predict(
        raw[sample], quantiles=[0.05, 0.5, 0.95], weighted_leaves=True
    )
    assert np.array_equal(quantiles[sample], reference)

    di = dissimilarity(model.space, raw)
    assert np.array_equal(got["di"], di.astype(np.float32), equal_nan=True)
    inside = (di <= model.space.threshold) & ~unseen
    assert np.array_equal(got["aoa"], inside.astype(np.uint8))
    assert 0 < inside.mean() < 1

    mean, variance = model.forest.predict_mean_variance(X)
    by_level = {0.05: quantiles[:, 0], 0.95: quantiles[:, 2]}
    lower, upper = model.calibration.bounds(mean, np.sqrt(variance), by_level, di)
    assert np.array_equal(got["lower"], lower.astype(np.float32), equal_nan=True)
    assert np.array_equal(got["upper"], upper.astype(np.float32), equal_nan=True)
    # The two DI bins widen differently: both occur on the map.
    bins = model.calibration.bin_of(di[~unseen])
    assert set(bins.tolist()) == {0, 1}
    width = got["upper"] - got["lower"]
    assert np.nanmean(width[~unseen][bins == 1]) > np.nanmean(width[~unseen][bins == 0])

    relative = (quantiles[:, 2] - quantiles[:, 0]) / quantiles[:, 1]
    np.testing.assert_allclose(got["relative_width"], relative.astype(np.float32), rtol=1e-6)

    trees = model.forest.predict_trees(X)
    se = np.sqrt(np.maximum(ij_variance(trees, model.inbag.astype(np.float64)), 0))
    np.testing.assert_allclose(got["se"], se, rtol=1e-5, atol=1e-3)
    assert np.isnan(got["se"][unseen]).all()


@pytest.mark.slow
def test_standard_errors_equal_forestci_on_map_pixels(
    plateau: Plateau, uncertain: UncertainModel, client: Client, tmp_path: Path
) -> None:
    import forestci

    model = uncertain.artifact
    options = PredictOptions(quantiles=(), interval=False, applicability=False, standard_error=True)
    predict_cube(plateau.cube, [model], tmp_path / "maps.zarr", options=options)
    ds, _ = open_prediction(tmp_path / "maps.zarr")
    raw, unseen = model.features.matrix(
        {name: plateau.covariates[name][plateau.valid] for name in model.features.variables}
    )
    sample = np.flatnonzero(~unseen)[::97][:300]
    reference = forestci.random_forest_error(
        uncertain.estimator, uncertain.X_train.shape, raw[sample], calibrate=False
    )
    got = ds["Fe_se"].values[plateau.valid][sample]
    np.testing.assert_allclose(got, np.sqrt(np.maximum(reference, 0)), rtol=1e-5, atol=1e-3)


def test_a_chunk_of_a_model_without_its_parts_is_refused_naming_them() -> None:
    X = np.arange(40, dtype=np.float32)[:, None]
    forest = pack_forest(RandomForestRegressor(5, random_state=0).fit(X, X[:, 0]))
    valid = np.ones((5, 8), dtype=bool)
    with pytest.raises(ValueError, match=r"leaf membership \(quantiles\), interval calibration"):
        predict_block(PixelModel(forest), X, np.zeros(40, bool), valid, PredictOptions())
    assert PixelModel(forest).missing(ALL_LAYERS) == [
        "leaf membership (quantiles)",
        "interval calibration (interval)",
        "training space (DI, AOA, interval)",
        "in-bag counts (standard error)",
    ]


def test_a_run_sends_its_workers_only_the_parts_its_layers_use(
    uncertain: UncertainModel,
) -> None:
    whole = uncertain.artifact.pixel_model
    bare = whole.needed_for(MEAN_ONLY)
    assert bare.forest is whole.forest
    assert (bare.membership, bare.inbag, bare.space, bare.calibration) == (None,) * 4
    assert bare.missing(MEAN_ONLY) == []
    intervals = whole.needed_for(PredictOptions(quantiles=(), applicability=False))
    # The interval starts from the quantile forest: its membership goes too, the in-bag not.
    assert intervals.membership is whole.membership
    assert intervals.inbag is None
    assert intervals.calibration is whole.calibration
    every = whole.needed_for(ALL_LAYERS)
    assert every.missing(ALL_LAYERS) == []
    assert every.inbag is whole.inbag
