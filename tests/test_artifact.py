"""Model artifacts: arrays + JSON round trip, no pickle, tampering and truncation refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from tpgrid.artifact import FOREST_FILE, MODEL_FILE, ModelArtifact, load_model, save_model
from tpgrid.errors import ArtifactError
from tpgrid.features import CategoricalFeature, FeatureSpec
from tpgrid.forest import pack_forest

FEATURES = FeatureSpec(("dem", "map"), (CategoricalFeature("vegetation", (1, 2), ("a", "b")),))


@pytest.fixture(scope="module")
def artifact() -> ModelArtifact:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 4)).astype(np.float32)
    y = X[:, 0] * 3 + X[:, 2]
    forest = pack_forest(RandomForestRegressor(n_estimators=5, random_state=0).fit(X, y))
    return ModelArtifact("Fe", forest, FEATURES, {"hyperparameters": {"n_estimators": 5}})


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
