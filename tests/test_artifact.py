"""Model artifacts: arrays + JSON round trip, no pickle, tampering and truncation refused;
scikit-learn's trees stored beside the packed forest rebuild an identical estimator."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from tpgrid.artifact import (
    FOREST_FILE,
    MODEL_FILE,
    SKLEARN_FILE,
    ModelArtifact,
    check_model,
    load_estimator,
    load_model,
    save_model,
    verify_models,
)
from tpgrid.core.applicability import training_space
from tpgrid.core.bootstrap import inbag_counts
from tpgrid.core.features import CategoricalFeature, FeatureSpec
from tpgrid.core.forest import pack_forest
from tpgrid.core.intervals import IntervalCalibration
from tpgrid.core.quantiles import forest_quantiles, leaf_membership
from tpgrid.errors import ArtifactError

FEATURES = FeatureSpec(("dem", "map"), (CategoricalFeature("vegetation", (1, 2), ("a", "b")),))


@pytest.fixture(scope="module")
def estimator() -> RandomForestRegressor:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 4)).astype(np.float32)
    y = X[:, 0] * 3 + X[:, 2]
    return RandomForestRegressor(n_estimators=5, max_features=0.5, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def artifact(estimator: RandomForestRegressor) -> ModelArtifact:
    forest = pack_forest(estimator)
    return ModelArtifact("Fe", forest, FEATURES, {"hyperparameters": {"n_estimators": 5}})


@pytest.fixture
def saved_with_estimator(
    artifact: ModelArtifact, estimator: RandomForestRegressor, tmp_path: Path
) -> Path:
    return save_model(artifact, tmp_path / "Fe", estimator=estimator)


def points(n: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 4)).astype(np.float32)


def test_round_trip_predicts_identically_and_keeps_the_record(
    artifact: ModelArtifact, tmp_path: Path
) -> None:
    loaded = load_model(save_model(artifact, tmp_path / "Fe"))
    X = np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forest.predict_trees(X), artifact.forest.predict_trees(X))
    assert loaded.features == FEATURES
    assert loaded.record == artifact.record
    assert loaded.model_hash == artifact.model_hash


def test_npz_holds_no_pickled_objects(artifact: ModelArtifact, tmp_path: Path) -> None:
    save_model(artifact, tmp_path)
    with np.load(tmp_path / FOREST_FILE, allow_pickle=False) as data:
        assert all(data[name].dtype != object for name in data.files)


def test_tampered_forest_is_refused(artifact: ModelArtifact, tmp_path: Path) -> None:
    save_model(artifact, tmp_path)
    arrays = dict(np.load(tmp_path / FOREST_FILE))
    arrays["value"] = arrays["value"] + 1.0
    np.savez(tmp_path / FOREST_FILE, **arrays)
    with pytest.raises(ArtifactError, match="does not match the hash"):
        load_model(tmp_path)


def test_truncated_forest_is_refused(artifact: ModelArtifact, tmp_path: Path) -> None:
    save_model(artifact, tmp_path)
    data = (tmp_path / FOREST_FILE).read_bytes()
    (tmp_path / FOREST_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="damaged"):
        load_model(tmp_path)


def test_missing_model_json_means_incomplete(artifact: ModelArtifact, tmp_path: Path) -> None:
    save_model(artifact, tmp_path)
    (tmp_path / MODEL_FILE).unlink()
    with pytest.raises(ArtifactError, match="not a complete model artifact"):
        load_model(tmp_path)


def test_other_format_is_refused(artifact: ModelArtifact, tmp_path: Path) -> None:
    save_model(artifact, tmp_path)
    doc = json.loads((tmp_path / MODEL_FILE).read_text())
    (tmp_path / MODEL_FILE).write_text(json.dumps(doc | {"format": "other/9"}))
    with pytest.raises(ArtifactError, match="other/9"):
        load_model(tmp_path)


def test_feature_count_must_match_the_forest(artifact: ModelArtifact) -> None:
    with pytest.raises(ArtifactError, match="4 columns"):
        ModelArtifact("Fe", artifact.forest, FeatureSpec(("dem",)))


def test_rebuilt_estimator_predicts_exactly_like_the_fitted_one(
    saved_with_estimator: Path, estimator: RandomForestRegressor
) -> None:
    rebuilt = load_estimator(saved_with_estimator)
    X = points(200)
    np.testing.assert_array_equal(rebuilt.predict(X), estimator.predict(X))
    for mine, theirs in zip(rebuilt.estimators_, estimator.estimators_, strict=True):
        np.testing.assert_array_equal(mine.predict(X), theirs.predict(X))


def test_rebuilt_estimator_keeps_hyperparameters_and_importances(
    saved_with_estimator: Path, estimator: RandomForestRegressor
) -> None:
    rebuilt = load_estimator(saved_with_estimator)
    assert rebuilt.get_params() == estimator.get_params()
    np.testing.assert_array_equal(rebuilt.feature_importances_, estimator.feature_importances_)


def test_sklearn_trees_file_holds_no_pickled_objects(saved_with_estimator: Path) -> None:
    with np.load(saved_with_estimator / SKLEARN_FILE, allow_pickle=False) as data:
        assert data["threshold"].dtype == np.float64
        assert all(data[name].dtype != object for name in data.files)


def test_saving_the_trees_leaves_the_model_hash_unchanged(
    saved_with_estimator: Path, artifact: ModelArtifact
) -> None:
    assert load_model(saved_with_estimator).model_hash == artifact.model_hash


def test_tampered_sklearn_trees_are_refused(saved_with_estimator: Path) -> None:
    arrays = dict(np.load(saved_with_estimator / SKLEARN_FILE))
    arrays["threshold"] = arrays["threshold"] + 0.5
    np.savez(saved_with_estimator / SKLEARN_FILE, **arrays)
    with pytest.raises(ArtifactError, match="does not match the hash"):
        load_estimator(saved_with_estimator)


def test_truncated_sklearn_trees_are_refused(saved_with_estimator: Path) -> None:
    data = (saved_with_estimator / SKLEARN_FILE).read_bytes()
    (saved_with_estimator / SKLEARN_FILE).write_bytes(data[: len(data) // 3])
    with pytest.raises(ArtifactError, match="damaged"):
        load_estimator(saved_with_estimator)


def test_trees_of_another_forest_are_refused_even_with_a_matching_hash(
    saved_with_estimator: Path, artifact: ModelArtifact, tmp_path: Path
) -> None:
    X = points(300)
    other = RandomForestRegressor(n_estimators=5, random_state=1).fit(X, X[:, 1])
    other_dir = save_model(
        ModelArtifact("Fe", pack_forest(other), FEATURES), tmp_path / "other", estimator=other
    )
    (saved_with_estimator / SKLEARN_FILE).write_bytes((other_dir / SKLEARN_FILE).read_bytes())
    doc = json.loads((saved_with_estimator / MODEL_FILE).read_text())
    doc["sklearn_trees"]["sha256"] = json.loads((other_dir / MODEL_FILE).read_text())[
        "sklearn_trees"
    ]["sha256"]
    (saved_with_estimator / MODEL_FILE).write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="different forests"):
        load_estimator(saved_with_estimator)


def test_artifact_saved_without_trees_says_so(artifact: ModelArtifact, tmp_path: Path) -> None:
    save_model(artifact, tmp_path)
    with pytest.raises(ArtifactError, match="without scikit-learn trees"):
        load_estimator(tmp_path)


def test_saving_an_estimator_that_is_not_the_forest_is_refused(
    artifact: ModelArtifact, tmp_path: Path
) -> None:
    X = points(300)
    other = RandomForestRegressor(n_estimators=5, random_state=1).fit(X, X[:, 1])
    with pytest.raises(ValueError, match="not the one"):
        save_model(artifact, tmp_path, estimator=other)


# --- verifying a directory of models -------------------------------------------------------


@pytest.fixture
def models_dir(artifact: ModelArtifact, estimator: RandomForestRegressor, tmp_path: Path) -> Path:
    for element in ("Fe", "Mo", "Zn"):
        save_model(artifact, tmp_path / "models" / element, estimator=estimator)
    return tmp_path / "models"


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_models_passes_intact_models(models_dir: Path) -> None:
    assert verify_models(models_dir) == []
    assert verify_models(models_dir / "Fe") == []  # one artifact's own directory


def test_verify_models_names_each_damaged_file_and_why(models_dir: Path) -> None:
    flip_a_byte(models_dir / "Fe" / FOREST_FILE)
    (models_dir / "Mo" / FOREST_FILE).unlink()
    text = (models_dir / "Zn" / MODEL_FILE).read_text()
    (models_dir / "Zn" / MODEL_FILE).write_text(text[: len(text) // 2])
    found = {str(d.path.relative_to(models_dir)): d.problem for d in verify_models(models_dir)}
    assert set(found) == {f"Fe/{FOREST_FILE}", f"Mo/{FOREST_FILE}", f"Zn/{MODEL_FILE}"}
    assert "damaged" in found[f"Fe/{FOREST_FILE}"]
    assert "cannot be read" in found[f"Mo/{FOREST_FILE}"]
    assert "not valid JSON" in found[f"Zn/{MODEL_FILE}"]


def test_verify_models_checks_the_scikit_learn_trees_without_rebuilding_them(
    models_dir: Path,
) -> None:
    arrays = dict(np.load(models_dir / "Fe" / SKLEARN_FILE))
    arrays["threshold"] = arrays["threshold"] * 0.5
    np.savez(models_dir / "Fe" / SKLEARN_FILE, **arrays)
    (damage,) = verify_models(models_dir)
    assert damage.path == models_dir / "Fe" / SKLEARN_FILE
    assert "does not match the hash" in damage.problem
    load_model(models_dir / "Fe")  # the forest itself is intact: only the stricter check fails
    with pytest.raises(ArtifactError, match="does not match the hash"):
        check_model(models_dir / "Fe")


def test_verify_models_names_a_stray_forest_and_an_empty_directory(
    models_dir: Path, tmp_path: Path
) -> None:
    (models_dir / "Ni").mkdir()
    (models_dir / "Ni" / FOREST_FILE).write_bytes((models_dir / "Fe" / FOREST_FILE).read_bytes())
    (damage,) = verify_models(models_dir)
    assert damage.path == models_dir / "Ni" / MODEL_FILE
    assert "not a complete model artifact" in damage.problem
    (tmp_path / "empty").mkdir()
    (nothing,) = verify_models(tmp_path / "empty")
    assert nothing.path == tmp_path / "empty"
    assert "no model artifact" in nothing.problem


# --- uncertainty parts -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def uncertain(estimator: RandomForestRegressor, artifact: ModelArtifact) -> ModelArtifact:
    """The artifact with every uncertainty part, each made by its own core function."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 4)).astype(np.float32)
    y = X[:, 0] * 3 + X[:, 2]
    sites = np.arange(300) // 3
    folds = sites % 3
    space = training_space(X, sites, folds, np.array([1.0, 0.5, 0.2, 0.2]), FEATURES)
    calibration = IntervalCalibration(0.9, "sd", (0.05, 0.95), (0.4,), (1.5, 2.5), (60, 40))
    return replace(
        artifact,
        membership=leaf_membership(estimator, X, y, artifact.forest),
        inbag=inbag_counts(estimator, 300),
        space=space,
        calibration=calibration,
    )


def test_uncertainty_parts_round_trip_and_enter_the_model_hash(
    uncertain: ModelArtifact, artifact: ModelArtifact, tmp_path: Path
) -> None:
    loaded = load_model(save_model(uncertain, tmp_path / "Fe"))
    assert loaded.model_hash == uncertain.model_hash != artifact.model_hash
    assert loaded.calibration == uncertain.calibration
    assert uncertain.inbag is not None
    assert loaded.inbag is not None
    np.testing.assert_array_equal(loaded.inbag, uncertain.inbag)
    assert loaded.inbag.dtype == np.int32
    assert uncertain.space is not None
    assert loaded.space is not None
    assert loaded.space.content_hash() == uncertain.space.content_hash()
    assert loaded.space.columns == FEATURES.columns
    X = points(40)
    assert uncertain.membership is not None
    assert loaded.membership is not None
    np.testing.assert_array_equal(
        forest_quantiles(loaded.forest, loaded.membership, X, [0.1, 0.9]),
        forest_quantiles(uncertain.forest, uncertain.membership, X, [0.1, 0.9]),
    )
    wider = replace(
        uncertain,
        calibration=replace(uncertain.calibration, widening=(1.5, 2.6)),  # type: ignore[arg-type]
    )
    assert wider.model_hash != uncertain.model_hash


@pytest.mark.parametrize("name", ["leaves.npz", "inbag.npz", "applicability.npz"])
def test_a_damaged_uncertainty_file_is_refused_and_named(
    uncertain: ModelArtifact, tmp_path: Path, name: str
) -> None:
    directory = save_model(uncertain, tmp_path / "models" / "Fe")
    with np.load(directory / name) as data:
        arrays = {key: data[key] for key in data.files}
    first = next(key for key in arrays if arrays[key].size > 1 and arrays[key].dtype.kind in "if")
    arrays[first] = arrays[first].copy()
    arrays[first].flat[0] += 1
    np.savez(directory / name, **arrays)
    with pytest.raises(ArtifactError, match=name):
        load_model(directory)
    (found,) = verify_models(tmp_path / "models")
    assert found.path == directory / name


def test_a_leaf_membership_of_another_forest_is_refused(
    uncertain: ModelArtifact, estimator: RandomForestRegressor
) -> None:
    other = pack_forest(
        RandomForestRegressor(n_estimators=2, random_state=1).fit(points(50), np.arange(50.0))
    )
    with pytest.raises(ArtifactError, match="leaf membership has"):
        replace(uncertain, forest=other, features=FeatureSpec(("a", "b", "c", "d")))
