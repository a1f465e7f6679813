"""The feature matrix: continuous columns as they are, categoricals one-hot by a fixed table."""

from __future__ import annotations

import numpy as np
import pytest

from tpgrid.core.features import CATEGORICAL_NODATA, CategoricalFeature, FeatureSpec
from tpgrid.errors import ConfigError

SPEC = FeatureSpec(
    continuous=("dem", "map"),
    categorical=(CategoricalFeature("vegetation", (1, 3), ("forest", "meadow")),),
)


def test_columns_are_continuous_first_then_one_indicator_per_training_class() -> None:
    assert SPEC.columns == ("dem", "map", "vegetation=forest", "vegetation=meadow")
    assert SPEC.column_variables == ("dem", "map", "vegetation", "vegetation")
    assert SPEC.variables == ("dem", "map", "vegetation")


def test_matrix_one_hot_encodes_and_flags_classes_never_seen_in_training() -> None:
    values = {
        "dem": np.array([[4000.0, 4100.0], [4200.0, np.nan]]),
        "map": np.array([[300.0, 310.0], [320.0, 330.0]]),
        "vegetation": np.array([[1, 3], [5, 1]], dtype="uint8"),
    }
    X, unseen = SPEC.matrix(values)
    assert X.dtype == np.float32
    np.testing.assert_array_equal(X[0], [4000, 300, 1, 0])
    np.testing.assert_array_equal(X[1], [4100, 310, 0, 1])
    np.testing.assert_array_equal(X[2], [4200, 320, 0, 0])  # class 5: never seen
    assert np.isnan(X[3, 0])
    assert unseen.tolist() == [False, False, True, False]


def test_categorical_nodata_gives_a_nan_row_and_is_not_unseen() -> None:
    values = {
        "dem": np.array([1.0, 2.0]),
        "map": np.array([1.0, 2.0]),
        "vegetation": np.array([CATEGORICAL_NODATA, np.nan]),
    }
    X, unseen = SPEC.matrix(values)
    assert np.isnan(X).all()
    assert not unseen.any()


def test_missing_variable_names_it() -> None:
    with pytest.raises(ConfigError, match="vegetation"):
        SPEC.matrix({"dem": np.ones(2), "map": np.ones(2)})


def test_json_round_trip() -> None:
    assert FeatureSpec.from_json(SPEC.to_json()) == SPEC


def test_malformed_json_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="rebuild the model"):
        FeatureSpec.from_json({"continuous": ["dem"]})


def test_repeated_variables_and_codes_are_refused() -> None:
    with pytest.raises(ConfigError, match="twice"):
        FeatureSpec(continuous=("dem", "dem"))
    with pytest.raises(ConfigError, match="repeated code"):
        CategoricalFeature("vegetation", (1, 1), ("a", "b"))
