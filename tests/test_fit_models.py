"""Fitting the small plateau: folds that never split a site, the grouped/random/spatial CVs, the
distributed search, the artifacts written, and the errors of bad inputs."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import zarr
from distributed import Client, LocalCluster
from typer.testing import CliRunner

from tests.plateau_fixtures import cube_path, plateau  # noqa: F401  (fixtures)
from tpgrid.artifact import (
    FOREST_FILE,
    HELD_OUT_FILE,
    MODEL_FILE,
    SKLEARN_FILE,
    _arrays_hash,
    check_model,
    load_estimator,
    load_held_out,
    load_model,
    verify_models,
)
from tpgrid.cli import app
from tpgrid.core.applicability import column_weights, training_space
from tpgrid.core.bootstrap import inbag_counts
from tpgrid.core.intervals import calibrate
from tpgrid.core.metrics import lins_ccc, r2_score, rmse
from tpgrid.core.quantiles import leaf_membership
from tpgrid.errors import ArtifactError, CubeError, FitError, OutputExistsError
from tpgrid.fit import (
    CV_PREDICTIONS_FILE,
    TRAINING_FILE,
    FitReport,
    FitSettings,
    HeldOutResults,
    SearchGrid,
    fit_models,
)
from tpgrid.fit.blocks import METHOD_DERIVED, METHOD_GIVEN
from tpgrid.fit.design import training_hash
from tpgrid.fit.heldout import held_out_fold
from tpgrid.fit.intervals import CALIBRATED_ON, held_out_incmse, scheme_held_out
from tpgrid.fit.oob import oob_forest_size
from tpgrid.fit.search import fit_forest
from tpgrid.synthetic import PlateauFiles

#: Small forests and a two-candidate grid: the behaviour under test, in seconds. The plateau's
#: calibration (Zn and Ni; its V and Mo ICP-MS subsets cannot support one); the spatial
#: blocks chosen from the data.
QUICK = FitSettings(
    elements=("Fe", "Zn", "Ni"),
    calibrate=("Zn", "Ni"),
    n_trees=40,
    search_trees=20,
    search_grid=SearchGrid(max_features=(0.33,), min_samples_leaf=(1, 5)),
)


@pytest.fixture(scope="module")
def fitted(
    plateau: PlateauFiles,  # noqa: F811
    cube_path: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> FitReport:
    out = tmp_path_factory.mktemp("models")
    return fit_models(plateau.sites, cube_path, out, QUICK, local_threads=2)


def model_dir(fitted: FitReport, element: str) -> Path:
    return next(f.directory for f in fitted.fitted if f.element == element)


def record(fitted: FitReport, element: str) -> dict[str, Any]:
    return next(f.record for f in fitted.fitted if f.element == element)


def predictions(fitted: FitReport, element: str) -> pd.DataFrame:
    return pd.read_parquet(model_dir(fitted, element) / CV_PREDICTIONS_FILE)


def assert_same_arrays(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array)


# --- fitting the small plateau --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("element", ["Fe", "Zn", "Ni"])
def test_no_site_is_ever_in_both_train_and_test_folds(fitted: FitReport, element: str) -> None:
    table = predictions(fitted, element)
    for fold in range(QUICK.cv_folds):
        test = table["fold_grouped"] == fold
        assert set(table.loc[test, "site_id"]).isdisjoint(table.loc[~test, "site_id"])
    assert table["fold_grouped"].nunique() == QUICK.cv_folds


@pytest.mark.slow
def test_spatial_folds_hold_whole_sites(fitted: FitReport) -> None:
    table = predictions(fitted, "Fe")
    assert (table.groupby("site_id")["fold_spatial"].nunique() == 1).all()
    assert record(fitted, "Fe")["cv"]["spatial"]["n_blocks"] >= QUICK.cv_folds


@pytest.mark.slow
def test_random_sample_cv_scores_higher_than_grouped_cv_when_sites_share_an_effect(
    fitted: FitReport,
) -> None:
    # The synthetic site effect is shared by a site's three samples: a random split lets the
    # model see a test sample's site-mates, which the grouped split forbids.
    for element in ("Fe", "Zn"):
        cv = record(fitted, element)["cv"]
        assert cv["random"]["r2"] > cv["grouped"]["r2"] + 0.15, element
        assert cv["random"]["rmse"] < cv["grouped"]["rmse"], element


@pytest.mark.slow
def test_every_cv_scheme_is_reported_with_every_metric(fitted: FitReport) -> None:
    rec = record(fitted, "Zn")
    for scheme in ("grouped", "random", "spatial"):
        assert {"r2", "rmse", "mae", "bias", "ccc", "n", "n_folds"} <= set(rec["cv"][scheme])
    assert 0 < rec["fit"]["oob_r2"] < rec["fit"]["r2"] < 1


@pytest.mark.slow
def test_cv_metrics_are_those_of_the_saved_out_of_fold_predictions(fitted: FitReport) -> None:
    table, rec = predictions(fitted, "Zn"), record(fitted, "Zn")
    for scheme in ("grouped", "random", "spatial"):
        observed, predicted = table["observed"], table[f"predicted_{scheme}"]
        assert rec["cv"][scheme]["r2"] == pytest.approx(r2_score(observed, predicted))
        assert rec["cv"][scheme]["ccc"] == pytest.approx(lins_ccc(observed, predicted))
    assert len(table) == rec["training"]["n_rows"]


@pytest.mark.slow
def test_the_search_selects_the_candidate_with_the_lowest_site_oob_rmse(fitted: FitReport) -> None:
    search = record(fitted, "Fe")["search"]
    best = min(search["candidates"], key=lambda c: c["rmse"])
    assert search["selected"] == best["params"]
    assert search["n_forests"] == 2
    assert record(fitted, "Fe")["hyperparameters"]["n_estimators"] == QUICK.n_trees
    # The candidates' RMSEs are those of the stored out-of-bag predictions.
    held = HeldOutResults.from_arrays(load_held_out(model_dir(fitted, "Fe")))
    observed = predictions(fitted, "Fe")["observed"].to_numpy()
    scored = held.search_oob_trees > 0
    for candidate, oob in zip(search["candidates"], held.search_oob, strict=True):
        assert candidate["rmse"] == pytest.approx(rmse(observed[scored], oob[scored]), 1e-12)
    assert search["oob_trees_per_row"]["min"] == held.search_oob_trees.min() > 0


@pytest.mark.slow
def test_the_held_out_results_are_those_of_the_grouped_folds_and_stored_exactly(
    fitted: FitReport,
) -> None:
    directory = model_dir(fitted, "Ni")
    held = HeldOutResults.from_arrays(load_held_out(directory))
    table = pd.read_parquet(directory / TRAINING_FILE)
    artifact = load_model(directory)
    X = table[list(artifact.features.columns)].to_numpy(np.float32)
    y = table["observed"].to_numpy()
    folds = predictions(fitted, "Ni")["fold_grouped"].to_numpy(np.int64)
    np.testing.assert_array_equal(held.folds, folds)
    # The grouped CV's out-of-fold prediction is the held-out trees' mean.
    np.testing.assert_array_equal(predictions(fitted, "Ni")["predicted_grouped"], held.mean)
    params = record(fitted, "Ni")["search"]["selected"]
    variables = list(artifact.features.column_variables)
    for fold in (0, QUICK.cv_folds - 1):
        again = held_out_fold(
            X, y, folds, fold, params, QUICK.search_trees, QUICK.seed, variables, 3
        )
        np.testing.assert_array_equal(held.trees[folds == fold], again.trees)
        np.testing.assert_array_equal(held.quantiles[folds == fold], again.quantiles)
        assert held.importance_base_sse[fold] == again.base_sse
        np.testing.assert_array_equal(held.importance_sse[fold], again.sse)
    assert held.trees.shape == (len(y), QUICK.search_trees)
    assert held.importance_sse.shape == (QUICK.cv_folds, len(set(variables)), 3)
    assert list(held.variables) == list(dict.fromkeys(variables))


@pytest.mark.slow
def test_the_model_carries_its_uncertainty_parts_made_from_its_own_fit(fitted: FitReport) -> None:
    directory = model_dir(fitted, "Fe")
    artifact = load_model(directory)
    estimator = load_estimator(directory)
    table = pd.read_parquet(directory / TRAINING_FILE)
    X = table[list(artifact.features.columns)].to_numpy(np.float32)
    y = table["observed"].to_numpy()
    assert artifact.membership is not None
    expected = leaf_membership(estimator, X, y, artifact.forest).to_arrays()
    assert_same_arrays(artifact.membership.to_arrays(), expected)
    np.testing.assert_array_equal(artifact.inbag, inbag_counts(estimator, len(y)))
    # The training space is the grouped folds' one, weighted by the held-out %IncMSE.
    held = HeldOutResults.from_arrays(load_held_out(directory))
    incmse = held_out_incmse(held, artifact.features.column_variables)
    weights = column_weights(incmse, artifact.features.column_variables)
    space = training_space(X, table["site_id"], held.folds, weights, artifact.features)
    assert artifact.space is not None
    assert_same_arrays(artifact.space.to_arrays(), space.to_arrays())
    _, site_index = np.unique(table["site_id"], return_inverse=True)
    np.testing.assert_array_equal(held.di, space.train_di[site_index])
    assert np.isfinite(held.spatial_di).all()
    assert held.spatial_folds.min() == 0


@pytest.mark.slow
def test_the_interval_calibration_reproduces_its_recorded_bins(fitted: FitReport) -> None:
    directory = model_dir(fitted, "Zn")
    artifact = load_model(directory)
    rec = artifact.record["intervals"]
    calibration = artifact.calibration
    assert calibration is not None
    assert calibration.level == QUICK.interval_level
    assert calibration.method == rec["method"]
    assert rec["calibrated_on"] == list(CALIBRATED_ON)
    assert list(calibration.di_edges) == rec["di_edges"]
    assert list(calibration.widening) == rec["widening"]
    # Recalibrated from the stored held-out rows: the same bins and widenings.
    held = HeldOutResults.from_arrays(load_held_out(directory))
    table = pd.read_parquet(directory / TRAINING_FILE)
    y, sites = table["observed"].to_numpy(), table["site_id"].to_numpy()
    again = calibrate(
        calibration.method,
        0.9,
        (0.05, 0.95),
        [h for s, h in scheme_held_out(held, y, sites).items() if s in CALIBRATED_ON],
    )
    # The quantile forest of the maps: as many trees as the held-out forests had.
    assert calibration.trees == QUICK.search_trees == rec["quantile_trees"]
    assert again == replace(calibration, trees=None)
    assert min(calibration.n_sites) >= 30
    # The recorded coverage per bin is that of the cross-conformal intervals.
    for scheme in ("grouped", "spatial"):
        summary = rec["coverage"][scheme]
        assert summary["overall"]["n_rows"] == len(y)
        assert sum(b["n_rows"] for b in summary["bins"]) == len(y)
        assert 0.75 < summary["overall"]["coverage"] < 1.0
    assert set(rec["compared"]) == {"quantile", "quantile_scaled", "sd"}
    assert (
        rec["compared"][rec["method"]]["grouped"]["coverage"]
        == (rec["coverage"]["grouped"]["overall"]["coverage"])
    )


@pytest.mark.slow
def test_the_record_holds_screening_calibration_and_provenance(
    fitted: FitReport,
    plateau: PlateauFiles,  # noqa: F811
) -> None:
    rec = record(fitted, "Zn")
    outliers = pd.read_csv(plateau.outliers)
    assert set(outliers.loc[outliers["element"] == "Zn", "sample_id"]) <= set(
        rec["screening"]["removed"]
    )
    assert rec["calibration"]["slope"] == pytest.approx(0.75, abs=0.05)
    assert rec["target"]["scale"] == "ICP-MS (XRF calibrated)"
    assert record(fitted, "Fe")["calibration"] is None
    assert rec["versions"]["scikit-learn"]
    assert rec["settings"]["search_trees"] == QUICK.search_trees


@pytest.mark.slow
def test_the_training_table_hash_is_that_of_the_saved_table(fitted: FitReport) -> None:
    directory = model_dir(fitted, "Ni")
    table = pd.read_parquet(directory / TRAINING_FILE)
    assert training_hash(table) == record(fitted, "Ni")["training"]["table_sha256"]


@pytest.mark.slow
def test_categoricals_are_one_hot_over_the_classes_seen_in_training(fitted: FitReport) -> None:
    artifact = load_model(model_dir(fitted, "Ni"))
    table = pd.read_parquet(model_dir(fitted, "Ni") / TRAINING_FILE)
    indicators = [c for c in artifact.features.columns if "=" in c]
    assert indicators
    assert (table[indicators].sum() > 0).all()  # no class without a training site
    assert list(table.columns[4:-1]) == list(artifact.features.columns)


@pytest.mark.slow
def test_the_artifact_reproduces_the_fit_with_both_forests(fitted: FitReport) -> None:
    directory = model_dir(fitted, "Zn")
    X = pd.read_parquet(directory / TRAINING_FILE)[list(load_model(directory).features.columns)]
    observed = pd.read_parquet(directory / TRAINING_FILE)["observed"]
    packed, _ = load_model(directory).forest.predict_mean_variance(X.to_numpy(np.float32))
    rebuilt = load_estimator(directory).predict(X.to_numpy(np.float32))
    # Equal up to the order in which threads add up the trees (last bits of a float64 sum).
    assert r2_score(observed, rebuilt) == pytest.approx(record(fitted, "Zn")["fit"]["r2"], 1e-12)
    np.testing.assert_allclose(packed, rebuilt, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "load"),
    [(FOREST_FILE, load_model), (SKLEARN_FILE, load_estimator), (HELD_OUT_FILE, load_held_out)],
)
def test_a_truncated_or_tampered_artifact_fails_clearly(
    fitted: FitReport, tmp_path: Path, name: str, load: Any
) -> None:
    truncated, tampered = tmp_path / "truncated", tmp_path / "tampered"
    for copy in (truncated, tampered):
        shutil.copytree(model_dir(fitted, "Ni"), copy)
    data = (truncated / name).read_bytes()
    (truncated / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="damaged"):
        load(truncated)
    arrays = dict(np.load(tampered / name))
    changed = "trees" if name == HELD_OUT_FILE else "threshold"
    arrays[changed] = arrays[changed] * 0.5
    np.savez(tampered / name, **arrays)
    with pytest.raises(ArtifactError, match="does not match the hash"):
        load(tampered)
    # What a run's verification and a reusing fit check: the damaged file is named.
    for copy in (truncated, tampered):
        with pytest.raises(ArtifactError):
            check_model(copy)
        assert [d.path.name for d in verify_models(copy)] == [name]


@pytest.mark.slow
def test_model_json_says_which_trees_the_cv_used(fitted: FitReport) -> None:
    doc = json.loads((model_dir(fitted, "Fe") / MODEL_FILE).read_text())
    n_sites = doc["record"]["training"]["n_sites"]
    assert doc["record"]["search"]["trees_per_fit"] == oob_forest_size(QUICK.search_trees, n_sites)
    assert doc["record"]["cv"]["trees_per_fit"] == QUICK.search_trees
    assert doc["sklearn_trees"]["params"]["n_estimators"] == QUICK.n_trees


# --- skipping and refusing -------------------------------------------------------------------


@pytest.mark.slow
def test_elements_with_fewer_sites_than_folds_are_skipped_with_the_reason(
    plateau: PlateauFiles,  # noqa: F811
    cube_path: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    # More folds than Ni's 60 sites, fewer than Cu's 72.
    settings = QUICK.model_copy(update={"elements": ("Ni", "Cu"), "cv_folds": 64})
    report = fit_models(plateau.sites, cube_path, tmp_path, settings, local_threads=2)
    assert [f.element for f in report.fitted] == ["Cu"]
    (skipped,) = report.skipped
    assert skipped.element == "Ni"
    assert "60 sites with usable Ni values, fewer than the 64 CV folds" in skipped.reason
    assert not (tmp_path / "Ni").exists()


def test_no_fittable_element_is_a_fit_error(
    plateau: PlateauFiles,  # noqa: F811
    cube_path: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = QUICK.model_copy(update={"elements": ("Ni", "Mo"), "cv_folds": 64})
    with pytest.raises(FitError, match=r"no element could be fitted:\n  Ni: 60 sites"):
        fit_models(plateau.sites, cube_path, tmp_path, settings)


@pytest.mark.slow
def test_existing_models_are_replaced_only_when_asked(
    plateau: PlateauFiles,  # noqa: F811
    cube_path: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = QUICK.model_copy(update={"elements": ("Ni",)})
    fit_models(plateau.sites, cube_path, tmp_path, settings, local_threads=2)
    first = load_model(tmp_path / "Ni").model_hash
    with pytest.raises(OutputExistsError, match="--overwrite"):
        fit_models(plateau.sites, cube_path, tmp_path, settings.model_copy(update={"seed": 1}))
    assert load_model(tmp_path / "Ni").model_hash == first
    fit_models(
        plateau.sites, cube_path, tmp_path, settings.model_copy(update={"seed": 1}), overwrite=True
    )
    assert load_model(tmp_path / "Ni").model_hash != first
    assert [p.name for p in tmp_path.iterdir()] == ["Ni"]  # no staging left behind


@pytest.mark.slow
def test_reuse_refits_only_the_elements_whose_training_table_changed(
    plateau: PlateauFiles,  # noqa: F811
    cube_path: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = QUICK.model_copy(update={"elements": ("Ni", "Mo")})
    models = tmp_path / "models"
    fit_models(plateau.sites, cube_path, models, settings, local_threads=2)
    hashes = {e: load_model(models / e).model_hash for e in ("Ni", "Mo")}

    again = fit_models(
        plateau.sites, cube_path, models, settings, reuse_unchanged=True, local_threads=2
    )
    assert [f.element for f in again.unchanged] == ["Ni", "Mo"]
    assert again.fitted == ()
    kept_held_out = (models / "Mo" / HELD_OUT_FILE).read_bytes()

    # One corrected Ni value: only the Ni model is refitted.
    table = pd.read_csv(plateau.sites)
    first_ni = table.index[table["Ni"].notna()][0]
    table.loc[first_ni, "Ni"] = table.loc[first_ni, "Ni"] * 1.1
    edited = tmp_path / "sites.csv"
    table.to_csv(edited, index=False)
    report = fit_models(edited, cube_path, models, settings, reuse_unchanged=True, local_threads=2)
    assert [f.element for f in report.fitted] == ["Ni"]
    assert [f.element for f in report.unchanged] == ["Mo"]
    assert load_model(models / "Mo").model_hash == hashes["Mo"]
    assert load_model(models / "Ni").model_hash != hashes["Ni"]
    # A kept model keeps its held-out results, as they were and still checked by their hash.
    assert (models / "Mo" / HELD_OUT_FILE).read_bytes() == kept_held_out
    assert HeldOutResults.from_arrays(load_held_out(models / "Mo")).trees.shape[1] == 20

    # Held-out results of an older format, intact (their hash recorded): fitted again, as a
    # model of another version, not repaired.
    arrays = load_held_out(models / "Mo")
    arrays["format_version"] = np.array(1, dtype=np.int64)
    np.savez(models / "Mo" / HELD_OUT_FILE, **arrays)
    doc = json.loads((models / "Mo" / MODEL_FILE).read_text())
    doc["held_out"]["sha256"] = _arrays_hash(arrays)
    (models / "Mo" / MODEL_FILE).write_text(json.dumps(doc))
    report = fit_models(edited, cube_path, models, settings, reuse_unchanged=True, local_threads=2)
    assert [f.element for f in report.fitted] == ["Mo"]
    assert report.repaired == ()
    assert load_model(models / "Mo").model_hash == hashes["Mo"]


@pytest.mark.slow
def test_reuse_refits_a_damaged_model_with_a_warning_and_reports_it(
    plateau: PlateauFiles,  # noqa: F811
    cube_path: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = QUICK.model_copy(update={"elements": ("Ni", "Mo")})
    models = tmp_path / "models"
    fit_models(plateau.sites, cube_path, models, settings, local_threads=2)
    hashes = {e: load_model(models / e).model_hash for e in ("Ni", "Mo")}
    arrays = dict(np.load(models / "Ni" / FOREST_FILE))
    arrays["value"] = arrays["value"] + 1.0
    np.savez(models / "Ni" / FOREST_FILE, **arrays)  # tampered: a valid file, other values
    held_out = (models / "Ni" / HELD_OUT_FILE).read_bytes()
    held_out_arrays = load_held_out(models / "Ni")
    text = (models / "Mo" / MODEL_FILE).read_text()
    (models / "Mo" / MODEL_FILE).write_text(text[:100])  # truncated
    with caplog.at_level(logging.WARNING, logger="tpgrid.fit.models"):
        report = fit_models(
            plateau.sites, cube_path, models, settings, reuse_unchanged=True, local_threads=2
        )
    assert [f.element for f in report.fitted] == ["Ni", "Mo"]
    assert report.unchanged == ()
    reasons = dict(report.repaired)
    assert list(reasons) == ["Ni", "Mo"]
    assert "does not match the hash" in reasons["Ni"]
    assert "not valid JSON" in reasons["Mo"]
    warned = [r.getMessage() for r in caplog.records if "damaged, fitted again" in r.getMessage()]
    assert [message.split(":")[0] for message in warned] == ["Ni", "Mo"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    # Fitting is deterministic: the repaired models are the ones first fitted.
    assert {e: load_model(models / e).model_hash for e in ("Ni", "Mo")} == hashes
    again = fit_models(
        plateau.sites, cube_path, models, settings, reuse_unchanged=True, local_threads=2
    )
    assert (again.fitted, again.repaired) == ((), ())
    assert_same_arrays(load_held_out(models / "Ni"), held_out_arrays)

    # Only the held-out results damaged (half a file): the model is fitted again too.
    (models / "Ni" / HELD_OUT_FILE).write_bytes(held_out[: len(held_out) // 2])
    report = fit_models(
        plateau.sites, cube_path, models, settings, reuse_unchanged=True, local_threads=2
    )
    assert [f.element for f in report.fitted] == ["Ni"]
    assert HELD_OUT_FILE in dict(report.repaired)["Ni"]
    assert_same_arrays(load_held_out(models / "Ni"), held_out_arrays)


def test_a_cube_missing_a_catalogued_layer_is_refused(
    plateau: PlateauFiles,  # noqa: F811
    cube_path: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    copy = tmp_path / "cube.zarr"
    shutil.copytree(cube_path, copy)
    shutil.rmtree(copy / "ndvi")
    zarr.consolidate_metadata(copy, zarr_format=3)
    with pytest.raises(CubeError, match=r"lacks layer\(s\) \['ndvi'\] listed in its catalog"):
        fit_models(plateau.sites, copy, tmp_path / "models", QUICK)


def test_a_cube_layer_without_data_at_the_sites_is_refused(
    plateau: PlateauFiles,  # noqa: F811
    cube_path: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    copy = tmp_path / "cube.zarr"
    shutil.copytree(cube_path, copy)
    shutil.rmtree(copy / "soc" / "c")  # metadata kept, every chunk gone: reads as NaN
    with pytest.raises(CubeError, match="layer 'soc' has no data at 120 site pixel"):
        fit_models(plateau.sites, copy, tmp_path / "models", QUICK)


# --- on a Dask cluster, and from the command line ---------------------------------------------


@pytest.mark.slow
def test_the_search_on_a_dask_cluster_gives_the_local_result(fitted: FitReport) -> None:
    table = pd.read_parquet(model_dir(fitted, "Ni") / TRAINING_FILE)
    columns = list(load_model(model_dir(fitted, "Ni")).features.columns)
    X, y = table[columns].to_numpy(np.float32), table["observed"].to_numpy()
    sites, blocks = table["site_id"].to_numpy(), table["row"].to_numpy() // 100
    variables = load_model(model_dir(fitted, "Ni")).features.column_variables
    settings = QUICK.model_copy(update={"spatial_block_km": 100.0})
    local = fit_forest(X, y, sites, blocks, settings, variables, local_threads=1)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster,
        Client(cluster),
    ):
        on_dask = fit_forest(X, y, sites, blocks, settings, variables)
    assert on_dask.record["search"]["backend"].startswith("dask: 2 workers")
    assert local.record["search"]["backend"] == "local threads: 1"
    for scheme in ("grouped", "random", "spatial"):
        np.testing.assert_array_equal(on_dask.predictions[scheme], local.predictions[scheme])
    assert on_dask.record["search"]["candidates"] == local.record["search"]["candidates"]
    for name, array in local.held_out.to_arrays().items():
        np.testing.assert_array_equal(on_dask.held_out.to_arrays()[name], array)


def test_tpgrid_fit_prints_the_cv_table_and_the_skipped_elements(
    plateau: PlateauFiles,  # noqa: F811
    cube_path: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = tmp_path / "fit.yaml"
    settings.write_text(
        "search_grid: {max_features: [0.33], min_samples_leaf: [5]}\ncalibrate: [Zn, Ni]\n"
    )
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        result = CliRunner().invoke(
            app,
            [
                "fit",
                *("--sites", str(plateau.sites), "--cube", str(cube_path)),
                *("--out", str(tmp_path / "models"), "--settings", str(settings)),
                *("-e", "Mo", "-e", "Cu", "--trees", "40", "--search-trees", "10"),
                # More folds than Mo's 60 sites, fewer than Cu's 72.
                *("--folds", "64", "--scheduler-address", client.scheduler.address),
            ],
        )
    assert result.exit_code == 0, result.output
    assert "Cu " in result.output
    assert all(scheme in result.output for scheme in ("grouped", "random", "spatial"))
    assert "Mo skipped: 60 sites" in result.output
    assert load_model(tmp_path / "models" / "Cu").record["hyperparameters"]["n_estimators"] == 40


# --- defaults from the data, and models worse than the mean ----------------------------------

#: The smallest fit: tiny forests, one candidate, five folds; everything else the defaults.
TINY = FitSettings(
    n_trees=10,
    search_trees=8,
    cv_folds=5,
    search_grid=SearchGrid(max_features=(0.5,), min_samples_leaf=(5,)),
)


@pytest.fixture(scope="module")
def noise_survey(
    plateau: PlateauFiles,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The plateau's sites measured for Pb alone, and Pb pure noise: no ICP-MS column, no
    other element, nothing a model of the covariates could predict."""
    table = pd.read_csv(plateau.sites)[["site_id", "sample_id", "lon", "lat"]]
    table["Pb"] = np.random.default_rng(7).lognormal(3.0, 0.5, len(table)).round(2)
    path = tmp_path_factory.mktemp("survey") / "pb.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def noise_fit(
    noise_survey: Path,
    cube_path: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[FitReport, Path]:
    out = tmp_path_factory.mktemp("noise_models")
    return fit_models(noise_survey, cube_path, out, TINY, local_threads=2), out


def test_the_defaults_fit_the_tables_own_elements_with_blocks_chosen_from_the_data(
    noise_fit: tuple[FitReport, Path],
) -> None:
    report, _ = noise_fit
    assert report.elements == ("Pb",)
    rec = record(report, "Pb")
    # The record holds the resolved settings, and what was given.
    spatial = rec["cv"]["spatial"]
    choice = spatial["block_choice"]
    assert rec["settings"]["elements"] == ["Pb"]
    assert rec["settings"]["calibrate"] == []
    assert rec["settings"]["spatial_block_km"] == choice["block_km"] == spatial["block_km"]
    assert rec["settings_given"]["elements"] is None
    assert rec["settings_given"]["calibrate"] == "auto"
    assert rec["settings_given"]["spatial_block_km"] is None
    assert rec["calibration"] is None
    assert choice["method"] == METHOD_DERIVED
    assert choice["n_prediction_points"] > 1000
    eligible = [c for c in choice["candidates"] if c["wasserstein_km"] is not None]
    best = min(eligible, key=lambda c: c["wasserstein_km"])
    assert best["block_km"] == choice["block_km"]
    assert spatial["n_blocks"] >= TINY.cv_folds
    assert choice["cv_distance_median_km"] > 0
    assert choice["prediction_distance_median_km"] > 0


def test_a_model_worse_than_the_mean_is_flagged_with_its_grouped_cv_r2(
    noise_fit: tuple[FitReport, Path],
) -> None:
    report, _ = noise_fit
    r2 = record(report, "Pb")["cv"]["grouped"]["r2"]
    assert r2 < 0
    assert report.poor == {"Pb": r2}
    (warning,) = report.warnings
    assert warning.startswith(f"Pb: grouped-CV R² −{abs(r2):.2f} — this model predicts held-out")
    assert "its map is published but flagged" in warning


def test_a_kept_model_is_reused_exactly_when_the_resolved_settings_are_equal(
    noise_survey: Path,
    cube_path: Path,  # noqa: F811
    noise_fit: tuple[FitReport, Path],
    tmp_path: Path,
) -> None:
    report, out = noise_fit
    models = tmp_path / "models"
    shutil.copytree(out, models)
    edge = record(report, "Pb")["cv"]["spatial"]["block_km"]
    explicit = TINY.model_copy(
        update={"elements": ("Pb",), "calibrate": (), "spatial_block_km": edge}
    )
    kept = fit_models(noise_survey, cube_path, models, explicit, reuse_unchanged=True)
    assert [f.element for f in kept.unchanged] == ["Pb"]
    assert kept.poor == report.poor  # a kept model is flagged as well
    other_edge = explicit.model_copy(update={"spatial_block_km": edge * 2})
    plan = fit_models(
        noise_survey, cube_path, models, other_edge, reuse_unchanged=True, dry_run=True
    )
    assert plan.pending == ("Pb",)


def test_a_given_block_edge_too_large_for_the_folds_is_a_warning_naming_the_key(
    noise_survey: Path,
    cube_path: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = TINY.model_copy(update={"spatial_block_km": 1000.0})
    report = fit_models(noise_survey, cube_path, tmp_path, settings, local_threads=2)
    spatial = record(report, "Pb")["cv"]["spatial"]
    assert spatial["block_choice"]["method"] == METHOD_GIVEN
    assert spatial["n_blocks"] < TINY.cv_folds
    spatial_warnings = [w for w in report.warnings if "spatial" in w]
    assert spatial_warnings == [f"Pb: {spatial['warning']}"]
    assert "fit.spatial_block_km" in spatial["warning"]


def test_tpgrid_fit_marks_and_explains_a_model_worse_than_the_mean(
    noise_survey: Path,
    cube_path: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        result = CliRunner().invoke(
            app,
            [
                "fit",
                *("--sites", str(noise_survey), "--cube", str(cube_path)),
                *("--out", str(tmp_path / "models"), "--trees", "10", "--search-trees", "8"),
                *("--folds", "5", "--scheduler-address", client.scheduler.address),
            ],
        )
    assert result.exit_code == 0, result.output
    assert "Pb (poor)" in result.output
    assert "Pb: grouped-CV R² −" in result.output
    assert "worse than their mean" in " ".join(result.output.split())
