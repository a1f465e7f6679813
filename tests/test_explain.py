"""Driver analyses: importance, betasq, PDP and ALE, on hand-made models and on a forest fitted
to the synthetic truth, whose response shapes are known.

On the small plateau MAP is a smooth 0.1° field that moves together with vegetation, NDVI and
soil (and AI is MAP / PET, r ≈ 0.99), so no model can tell MAP's own effect from theirs; CIA
there never drops below 0.5. The shape tests therefore run on a copy of the plateau whose MAP
varies independently from one 0.1° cell to the next (80–720 mm, AI recomputed as MAP / PET) and
whose CIA is stretched to 0.26–0.83, with the truth computed from the cube's own covariates by
the synthetic response functions.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from sklearn.ensemble import RandomForestRegressor

from tests.plateau_fixtures import plateau  # noqa: F401  (fixture)
from tpgrid.core.explain import (
    EffectCurve,
    HeldOut,
    accumulated_local_effects,
    betasq,
    correlated_pairs,
    group_importance,
    partial_dependence,
    permutation_importance,
    predictor_columns,
)
from tpgrid.core.features import FeatureSpec
from tpgrid.core.forest import PackedForest, pack_forest
from tpgrid.cube import build_cube, open_cube
from tpgrid.errors import AnalysisError
from tpgrid.fit.design import cube_layers, feature_spec
from tpgrid.grid import TargetGrid, load_grid_spec
from tpgrid.sources import load_catalog
from tpgrid.synthetic import PlateauFiles, log_truth_without_intercept

ELEMENT = "Zn"  # the element with the strongest MAP and AI coefficients and a strong CIA one
N_TRAIN, N_TEST = 5000, 1500


@dataclass(frozen=True)
class TruthFit:
    """A forest fitted to the truth at random valid pixels, and held-out pixels."""

    features: FeatureSpec
    X: np.ndarray
    y: np.ndarray
    train: np.ndarray
    test: np.ndarray
    groups: dict[str, str]
    forest: PackedForest

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.forest.predict_mean_variance(X)[0]


def _rewrite(path: Path, change: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    """Apply ``change(values, where)`` to the present pixels of a single-band GeoTIFF."""
    with rasterio.open(path) as src:
        profile, data, nodata = src.profile, src.read(1), src.nodata
    present = data != nodata
    data[present] = change(data[present], present)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


@pytest.fixture(scope="module")
def truth_fit(
    plateau: PlateauFiles,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> TruthFit:
    root = tmp_path_factory.mktemp("effects") / "plateau"
    shutil.copytree(plateau.root, root)
    covariates = root / "covariates"
    rng = np.random.default_rng(1)
    with rasterio.open(covariates / "map.tif") as src:
        old_map = src.read(1)
    new_map = rng.uniform(80.0, 720.0, old_map.shape)
    # map.tif and ai.tif share one 0.1° grid, so AI = MAP / PET keeps each cell's PET.
    _rewrite(covariates / "map.tif", lambda v, where: new_map[where])
    _rewrite(covariates / "ai.tif", lambda v, where: v * new_map[where] / old_map[where])
    _rewrite(covariates / "cia.tif", lambda v, where: np.clip(0.5 + 3.0 * (v - 0.6), 0.02, 0.98))
    cube_path = root.parent / "cube.zarr"
    grid = TargetGrid.from_spec(load_grid_spec(root / "grid.yaml"))
    build_cube(load_catalog(root / "catalog.yaml"), grid, cube_path)

    cube = open_cube(cube_path).load()
    layers = cube_layers(cube, cube_path)
    valid = np.flatnonzero(cube["valid"].values.ravel() == 1)
    pixels = np.random.default_rng(0).choice(valid, N_TRAIN + N_TEST, replace=False)
    values = {name: cube[name].values.ravel()[pixels] for name in layers}
    features = feature_spec(layers, values)
    X, _ = features.matrix(values)
    intercept = json.loads((root / "truth" / "truth.json").read_text())["elements"][ELEMENT][
        "intercept"
    ]
    as_float = {name: v.astype(np.float32) for name, v in values.items()}
    y = np.exp(log_truth_without_intercept(as_float, ELEMENT) + intercept)
    train, test = np.arange(N_TRAIN), np.arange(N_TRAIN, N_TRAIN + N_TEST)
    estimator = RandomForestRegressor(
        n_estimators=100, min_samples_leaf=2, max_features=0.33, n_jobs=2, random_state=0
    ).fit(X[train], y[train])
    return TruthFit(
        features,
        X,
        y,
        train,
        test,
        {name: str(attrs["tpgrid:group"]) for name, attrs in layers.items()},
        pack_forest(estimator),
    )


def curve(fit: TruthFit, kind: str, variable: str) -> EffectCurve:
    column = fit.features.columns.index(variable)
    X = fit.X[fit.train]
    if kind == "pdp":
        return partial_dependence(fit.predict, X, column, variable)
    return accumulated_local_effects(fit.predict, X, column, variable)


# --- shapes recovered from the synthetic truth ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pdp", "ale"])
def test_map_effect_has_its_trough_between_300_and_500_mm(truth_fit: TruthFit, kind: str) -> None:
    effect = curve(truth_fit, kind, "map")
    trough = effect.grid[np.argmin(effect.values)]
    assert 300.0 <= trough <= 500.0
    # A U, not a slope: both ends lie clearly above the trough (≥ 0.5 % of the mean Zn).
    depth = 0.005 * truth_fit.y.mean()
    assert effect.values[0] > effect.values.min() + depth
    assert effect.values[-1] > effect.values.min() + depth


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pdp", "ale"])
def test_cia_effect_is_flat_below_one_half_and_rises_past_it(
    truth_fit: TruthFit, kind: str
) -> None:
    effect = curve(truth_fit, kind, "cia")
    low = effect.grid[0]
    assert low < 0.4
    rise = float(effect.at(0.7) - effect.at(0.5))
    below = float(np.ptp(effect.at(np.linspace(low, 0.47, 20))))
    assert rise > 0.1 * truth_fit.y.mean()
    assert below < 0.05 * rise


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pdp", "ale"])
def test_slope_effect_rises_below_10_degrees_and_saturates_above(
    truth_fit: TruthFit, kind: str
) -> None:
    effect = curve(truth_fit, kind, "slope")
    assert effect.grid[-1] > 15.0
    rise_below = float(effect.at(10.0) - effect.values[0])
    rise_above = float(effect.values[-1] - effect.at(10.0))
    assert rise_below > 0.03 * truth_fit.y.mean()
    assert abs(rise_above) < 0.1 * rise_below


@pytest.mark.slow
def test_permutation_importance_finds_the_truth_drivers_and_ignores_aspect(
    truth_fit: TruthFit,
) -> None:
    held_out = [HeldOut(truth_fit.predict, truth_fit.test)]
    importance = permutation_importance(
        held_out, truth_fit.X, truth_fit.y, truth_fit.features.column_variables, n_repeats=2
    )["incmse"]
    # Aspect (northness, eastness) is not in the truth at all; CIA and slope are strong.
    for driver in ("cia", "slope", "vegetation"):
        assert importance[driver] > 20.0
        assert importance[driver] > 50 * max(importance["northness"], importance["eastness"])


@pytest.mark.slow
def test_grouped_importance_puts_soil_above_disturbance(truth_fit: TruthFit) -> None:
    held_out = [HeldOut(truth_fit.predict, truth_fit.test)]
    importance = permutation_importance(
        held_out, truth_fit.X, truth_fit.y, truth_fit.features.column_variables, n_repeats=1
    )["incmse"]
    by_group = group_importance(importance, truth_fit.groups)
    assert by_group["soil"] > 10 * by_group["disturbance"]


# --- hand-made models ----------------------------------------------------------------------------


def test_predictor_columns_group_a_categorical_indicators() -> None:
    blocks = predictor_columns(["dem", "map", "veg", "veg", "veg"])
    assert blocks == {"dem": [0], "map": [1], "veg": [2, 3, 4]}


def test_importance_is_zero_for_a_predictor_the_model_ignores() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 2)).astype(np.float32)
    y = 3.0 * X[:, 0].astype(np.float64)

    def predict(A: np.ndarray) -> np.ndarray:
        return 3.0 * A[:, 0].astype(np.float64) + 0.1

    table = permutation_importance([HeldOut(predict, np.arange(400))], X, y, ["a", "b"])
    assert table.loc["b", "incmse"] == 0.0
    # Shuffling a ~ N(0, 1) adds 9·2 to the MSE of 0.01: about 180,000 %.
    assert table.loc["a", "incmse"] == pytest.approx(100 * 18.0 / 0.01, rel=0.2)


def test_importance_shuffles_a_categorical_indicators_together() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, 300)
    X = np.eye(3, dtype=np.float32)[codes]
    y = codes.astype(np.float64)

    def predict(A: np.ndarray) -> np.ndarray:
        assert np.all(A.sum(axis=1) == 1.0), "a row lost its one class"
        return A @ np.array([0.0, 1.0, 2.0]) + 0.05

    table = permutation_importance([HeldOut(predict, np.arange(300))], X, y, ["veg"] * 3)
    assert list(table.index) == ["veg"]
    assert table.loc["veg", "incmse"] > 1000.0


def test_importance_needs_held_out_rows() -> None:
    with pytest.raises(AnalysisError, match="held-out"):
        permutation_importance([], np.zeros((3, 1)), np.zeros(3), ["a"])


def test_betasq_is_the_squared_standardized_coefficient() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 2.0, 2000), rng.normal(0, 1.0, 2000)
    y = 3.0 * a + 1.0 * b
    table = betasq(np.column_stack([a, b]), y, ["a", "b"], ["a", "b"])
    sd_y = np.std(y)
    assert table.loc["a", "betasq"] == pytest.approx((3.0 * np.std(a) / sd_y) ** 2, rel=1e-6)
    assert table.loc["b", "betasq"] == pytest.approx((1.0 * np.std(b) / sd_y) ** 2, rel=1e-6)
    assert table["percent"].sum() == pytest.approx(100.0)


def test_betasq_leaves_out_aliased_columns_even_in_float32() -> None:
    rng = np.random.default_rng(0)
    clay, silt = rng.uniform(10, 30, 500), rng.uniform(20, 40, 500)
    sand = 100.0 - clay - silt
    classes = np.eye(2)[rng.integers(0, 2, 500)]
    # As the cube stores them: float32, so clay + silt + sand is 100 only to ~1e-7.
    X = np.column_stack([clay, silt, sand, classes]).astype(np.float32)
    y = clay + 5.0 * classes[:, 0] + rng.normal(0, 0.1, 500)
    columns = ["clay", "silt", "sand", "veg=a", "veg=b"]
    table = betasq(X, y, columns, ["clay", "silt", "sand", "veg", "veg"])
    # sand = 100 − clay − silt and veg=b = 1 − veg=a carry nothing new.
    assert table.loc["sand", "aliased"] == 1
    assert table.loc["veg", "aliased"] == 1
    assert table.loc["sand", "betasq"] == 0.0
    assert table.loc["veg", "betasq"] > table.loc["silt", "betasq"]


def test_pdp_of_a_linear_model_is_its_line() -> None:
    X = np.random.default_rng(0).uniform(0, 10, (500, 2)).astype(np.float32)

    def predict(A: np.ndarray) -> np.ndarray:
        return 2.0 * A[:, 0] + A[:, 1]

    effect = partial_dependence(predict, X, 0, "a")
    expected = 2.0 * effect.grid + X[:, 1].astype(np.float64).mean()
    np.testing.assert_allclose(effect.values, expected, rtol=1e-5)


def test_ale_of_an_additive_model_is_its_centred_component() -> None:
    X = np.random.default_rng(0).uniform(0, 4, (2000, 2)).astype(np.float32)

    def predict(A: np.ndarray) -> np.ndarray:
        return (A[:, 0].astype(np.float64) - 2.0) ** 2 + 5.0 * A[:, 1]

    effect = accumulated_local_effects(predict, X, 0, "a")
    component = (effect.grid - 2.0) ** 2
    # Centred on the rows: the ALE and the component differ by a constant.
    np.testing.assert_allclose(
        effect.values - effect.values.mean(), component - component.mean(), atol=0.02
    )
    assert effect.counts.sum() == 2000


def test_effect_curves_refuse_a_constant_predictor() -> None:
    X = np.ones((50, 1), dtype=np.float32)
    with pytest.raises(AnalysisError, match="does not vary"):
        partial_dependence(lambda A: A[:, 0].astype(np.float64), X, 0, "a")


def test_group_importance_sums_per_group_and_collects_the_rest() -> None:
    importance = pd.Series({"map": 3.0, "ai": 2.0, "clay": 4.0, "x": 1.0})
    summed = group_importance(importance, {"map": "climate", "ai": "climate", "clay": "soil"})
    assert summed.to_dict() == {"climate": 5.0, "soil": 4.0, "other": 1.0}


def test_correlated_pairs_lists_strong_pairs_strongest_first_of_either_sign() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=300)
    X = np.column_stack(
        [a, -2 * a + rng.normal(0, 0.01, 300), a + rng.normal(0, 0.4, 300), np.ones(300)]
    )
    pairs = correlated_pairs(X, ["map", "ai", "ndvi", "constant"], threshold=0.9)
    found = [(row.a, row.b) for row in pairs.itertuples()]
    assert found[0] == ("map", "ai")
    assert pairs["r"].iloc[0] == pytest.approx(-1.0, abs=1e-3)
    assert set(found[1:]) == {("map", "ndvi"), ("ai", "ndvi")}  # r ≈ ±0.93; constant left out


@pytest.mark.slow
def test_truth_fit_sees_map_and_ai_as_one_gradient(truth_fit: TruthFit) -> None:
    continuous = list(truth_fit.features.continuous)
    X = truth_fit.X[:, : len(continuous)]
    pairs = correlated_pairs(X, continuous, threshold=0.95)
    assert ("map", "ai") in {(row.a, row.b) for row in pairs.itertuples()}
