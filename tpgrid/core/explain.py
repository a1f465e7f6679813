"""Why the maps look as they do: importance of the predictors and the shape of their effects.

The paper's driver analyses, on plain inputs (a feature matrix, the target in mg/kg, and a
``predict`` function, e.g. a fitted forest's):

- permutation importance as %IncMSE, on held-out rows, per *predictor* (the indicator columns
  of a categorical are permuted together, so vegetation type is one predictor as in the paper),
  and summed per predictor group (climate, soil, topography, …);
- relative importance by 'betasq' (R relaimpo): squared standardized coefficients of the linear
  model of the same predictors;
- partial dependence (PDP) and accumulated local effects (ALE) curves of chosen predictors.

PDP averages the model over the training rows with one predictor set to each grid value; where
predictors are correlated (MAP and AI are), it asks the model about combinations it never saw.
ALE accumulates the model's local changes within quantile bins of the predictor, using only
rows that lie in each bin, so it does not extrapolate; the report shows both, as the paper does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from tpgrid.core.arrays import F32, F64
from tpgrid.errors import AnalysisError

#: A fitted model: ``X`` (n, n_columns) float32 → prediction (n,) in mg/kg.
Predict = Callable[[F32], F64]


def predictor_columns(column_variables: Sequence[str]) -> dict[str, list[int]]:
    """Column indices of ``X`` per predictor, in first-appearance order (a categorical's
    indicator columns all belong to its one variable; see ``FeatureSpec.column_variables``)."""
    blocks: dict[str, list[int]] = {}
    for j, variable in enumerate(column_variables):
        blocks.setdefault(variable, []).append(j)
    return blocks


# --- permutation importance --------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    """A model and the rows of ``X`` it did not see when fitted (e.g. one CV fold)."""

    predict: Predict
    rows: npt.NDArray[np.intp]


def permutation_importance(
    held_out: Sequence[HeldOut],
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    column_variables: Sequence[str],
    *,
    n_repeats: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """%IncMSE per predictor: how much the held-out mean squared error grows, in percent, when
    the predictor's columns are shuffled across the held-out rows of each model.

    Squared errors are pooled over all models' held-out rows before the ratio is taken, as for
    one out-of-fold prediction. Returns ``incmse`` (mean over ``n_repeats`` shuffles) and
    ``sd`` (between shuffles), indexed by predictor, by decreasing ``incmse``. Held-out rather
    than training rows: a forest fitted on a site's triplicates predicts them almost exactly,
    which would inflate every importance. The same as :func:`permutation_errors` of every model
    summed and passed to :func:`importance_table` (which is how the fit computes it, one model
    per task).
    """
    X32 = np.asarray(X, dtype=np.float32)
    target = np.asarray(y, dtype=np.float64)
    sizes = [part.rows.size for part in held_out]
    if not any(sizes):
        raise AnalysisError("permutation importance needs held-out rows")
    errors = [
        permutation_errors(
            part.predict,
            X32[part.rows],
            target[part.rows],
            column_variables,
            part=p,
            part_sizes=sizes,
            n_repeats=n_repeats,
            seed=seed,
        )
        for p, part in enumerate(held_out)
    ]
    base = sum(e[0] for e in errors)
    sse = np.sum([e[1] for e in errors], axis=0)
    return importance_table(base, sse, column_variables)


def permutation_errors(
    predict: Predict,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    column_variables: Sequence[str],
    *,
    part: int,
    part_sizes: Sequence[int],
    n_repeats: int,
    seed: int,
) -> tuple[float, F64]:
    """One held-out model's share of :func:`permutation_importance`: the squared error of
    ``predict`` on its held-out rows ``X``, ``y`` as they are, and with each predictor's
    columns shuffled (n_predictors, n_repeats), in :func:`predictor_columns` order.

    The model is number ``part`` of models holding out ``part_sizes`` rows: the shuffles are
    drawn from one generator seeded with ``seed``, predictor by predictor, repeat by repeat,
    model by model, and the draws of the other models are replayed and skipped, so every model
    gets the shuffles it would get if all were computed in one place.
    """
    X32 = np.asarray(X, dtype=np.float32)
    target = np.asarray(y, dtype=np.float64)
    if X32.shape[0] != part_sizes[part]:
        raise ValueError(f"model {part} holds out {part_sizes[part]} rows, not {X32.shape[0]}")
    blocks = predictor_columns(column_variables)
    base = _sse(predict(X32), target) if X32.shape[0] else 0.0
    sse = np.zeros((len(blocks), n_repeats))
    rng = np.random.default_rng(seed)
    for v, columns in enumerate(blocks.values()):
        for r in range(n_repeats):
            for p, size in enumerate(part_sizes):
                order = rng.permutation(size)
                if p != part:
                    continue
                shuffled = X32.copy()
                shuffled[:, columns] = shuffled[order][:, columns]
                sse[v, r] = _sse(predict(shuffled), target)
    return base, sse


def importance_table(
    base: float, sse: npt.ArrayLike, column_variables: Sequence[str]
) -> pd.DataFrame:
    """%IncMSE from pooled held-out squared errors: ``base`` unshuffled, ``sse``
    (n_predictors, n_repeats) shuffled (sums of :func:`permutation_errors` over the models).
    Returns ``incmse`` and ``sd`` per predictor, by decreasing ``incmse``."""
    shuffled = np.asarray(sse, dtype=np.float64)
    variables = list(predictor_columns(column_variables))
    if not variables or shuffled.shape[0] != len(variables) or shuffled.shape[1] < 1:
        raise AnalysisError(
            f"importance needs errors of {len(variables)} predictors, got shape {shuffled.shape}"
        )
    if base <= 0:
        raise AnalysisError("the held-out predictions are exact: permutation importance is moot")
    increases = 100.0 * (shuffled - base) / base
    n_repeats = shuffled.shape[1]
    table = pd.DataFrame(
        {
            "incmse": dict(zip(variables, increases.mean(axis=1).tolist(), strict=True)),
            "sd": dict(
                zip(
                    variables,
                    (
                        increases.std(axis=1, ddof=1) if n_repeats > 1 else np.zeros(len(variables))
                    ).tolist(),
                    strict=True,
                )
            ),
        }
    )
    return table.sort_values("incmse", ascending=False)


def _sse(predicted: F64, observed: F64) -> float:
    return float(np.sum((np.asarray(predicted, dtype=np.float64) - observed) ** 2))


def group_importance(importance: pd.Series[float], groups: Mapping[str, str]) -> pd.Series[float]:
    """Importance summed per predictor group (e.g. ``{"map": "climate", …}``), largest first.

    Predictors without a group are summed under ``"other"``.
    """
    labels = [groups.get(str(variable), "other") for variable in importance.index]
    summed: pd.Series[float] = importance.groupby(labels).sum().sort_values(ascending=False)
    return summed


def correlated_pairs(
    X: npt.ArrayLike, columns: Sequence[str], threshold: float = 0.9
) -> pd.DataFrame:
    """Pairs of columns of ``X`` whose Pearson correlation is at least ``threshold`` in
    absolute value, strongest first (``a``, ``b``, ``r``). Between such predictors a forest
    splits or swaps credit at will, so their importances, betasq and PDPs must be read
    together (on the plateau MAP and AI, AI being MAP / PET)."""
    A = np.asarray(X, dtype=np.float64)
    varies = A.std(axis=0) > 0
    names = [name for name, keep in zip(columns, varies, strict=True) if keep]
    r = np.atleast_2d(np.corrcoef(A[:, varies], rowvar=False))
    rows = [
        {"a": names[i], "b": names[j], "r": float(r[i, j])}
        for i in range(len(names))
        for j in range(i + 1, len(names))
        if abs(r[i, j]) >= threshold
    ]
    frame = pd.DataFrame(rows, columns=["a", "b", "r"])
    return frame.sort_values("r", key=np.abs, ascending=False, ignore_index=True)


# --- betasq ---------------------------------------------------------------------------------------


def betasq(
    X: npt.ArrayLike, y: npt.ArrayLike, columns: Sequence[str], column_variables: Sequence[str]
) -> pd.DataFrame:
    """Relative importance 'betasq' (relaimpo): squared standardized OLS coefficients.

    Every column and the target are standardized (mean 0, SD 1) and regressed by OLS; a
    column that is constant or a linear combination of earlier ones (the last indicator of a
    categorical; sand when clay + silt + sand = 100 %) is *aliased* and left out, as R's ``lm``
    does. Returns, per predictor, ``betasq`` (the sum over its columns: one for a continuous
    predictor, its indicators for a categorical one), ``percent`` (share of the total) and
    ``aliased`` (columns left out), by decreasing ``betasq``.
    """
    A = np.asarray(X, dtype=np.float64)
    target = np.asarray(y, dtype=np.float64)
    if A.shape[0] <= A.shape[1] or np.std(target) == 0:
        raise AnalysisError(
            f"betasq needs more rows ({A.shape[0]}) than columns ({A.shape[1]}) and a target "
            "that varies"
        )
    sd = A.std(axis=0)
    Z = (A - A.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    kept = _independent_columns(Z)
    beta, *_ = np.linalg.lstsq(Z[:, kept], (target - target.mean()) / target.std(), rcond=None)
    squared = np.full(A.shape[1], np.nan)
    squared[kept] = beta**2
    frame = pd.DataFrame(
        {"variable": list(column_variables), "column": list(columns), "betasq": squared}
    )
    per_variable = frame.groupby("variable", sort=False).agg(
        betasq=("betasq", "sum"),
        aliased=("betasq", lambda values: int(values.isna().sum())),
    )
    per_variable["percent"] = 100.0 * per_variable["betasq"] / per_variable["betasq"].sum()
    return per_variable[["betasq", "percent", "aliased"]].sort_values("betasq", ascending=False)


def _independent_columns(Z: F64, tolerance: float = 1e-5) -> list[int]:
    """Columns of ``Z`` (standardized) that are not constant and not in the span of the columns
    kept before them: R's pivoting in column order.

    A column counts as in the span when its residual is below ``tolerance`` of its norm. R's
    ``lm`` uses 1e-7, but covariates come from float32 rasters: clay + silt + sand sums to 100
    only to ~1e-7 relative, which leaves sand a residual of ~3e-7 and, kept, gives clay, silt
    and sand huge coefficients of opposite sign.
    """
    kept: list[int] = []
    basis = np.empty((Z.shape[0], 0))
    for j in range(Z.shape[1]):
        column = Z[:, j]
        norm = float(np.linalg.norm(column))
        if norm == 0:
            continue
        residual = column - basis @ (basis.T @ column)
        if np.linalg.norm(residual) > tolerance * norm:
            kept.append(j)
            basis = np.column_stack([basis, residual / np.linalg.norm(residual)])
    return kept


# --- effect curves ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EffectCurve:
    """The effect of one predictor: ``values`` at ``grid`` (the predictor's units).

    For a PDP, ``values`` is the mean prediction in mg/kg; for ALE, the accumulated effect in
    mg/kg, centred so its mean over the training rows is 0. ``counts`` is the number of
    training rows per ALE bin (between consecutive grid values); empty for a PDP.
    """

    variable: str
    kind: Literal["pdp", "ale"]
    grid: F64
    values: F64
    counts: npt.NDArray[np.int64]

    def at(self, x: npt.ArrayLike) -> F64:
        """The curve linearly interpolated at ``x``."""
        return np.interp(np.asarray(x, dtype=np.float64), self.grid, self.values)


def partial_dependence(
    predict: Predict,
    X: npt.ArrayLike,
    column: int,
    variable: str,
    *,
    n_grid: int = 30,
    percentiles: tuple[float, float] = (2.5, 97.5),
    max_rows: int = 2000,
    seed: int = 0,
) -> EffectCurve:
    """PDP of ``X[:, column]``: at each of ``n_grid`` evenly spaced values between the given
    percentiles of the column, the mean prediction over (at most ``max_rows`` sampled) rows."""
    rows = _sample_rows(np.asarray(X, dtype=np.float32), max_rows, seed)
    low, high = np.percentile(rows[:, column], percentiles)
    if not high > low:
        raise AnalysisError(f"{variable} does not vary in the training rows: no PDP")
    grid = np.linspace(low, high, n_grid)
    stacked = np.repeat(rows[None, :, :], n_grid, axis=0)
    stacked[:, :, column] = grid[:, None]
    predicted = np.asarray(predict(stacked.reshape(-1, rows.shape[1])), dtype=np.float64)
    values = predicted.reshape(n_grid, rows.shape[0]).mean(axis=1)
    return EffectCurve(variable, "pdp", grid, values, np.zeros(0, dtype=np.int64))


def accumulated_local_effects(
    predict: Predict,
    X: npt.ArrayLike,
    column: int,
    variable: str,
    *,
    n_bins: int = 20,
) -> EffectCurve:
    """First-order ALE of ``X[:, column]`` (Apley & Zhu 2020) over ``n_bins`` quantile bins.

    In each bin, the rows lying in it are predicted with the predictor moved to the bin's
    upper and lower edge; the mean difference is the bin's local effect; local effects are
    accumulated from the lowest edge and centred on their row-weighted mean.
    """
    A = np.asarray(X, dtype=np.float32)
    x = A[:, column].astype(np.float64)
    edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1)))
    if edges.size < 2:
        raise AnalysisError(f"{variable} does not vary in the training rows: no ALE")
    # Bin k holds edges[k] < x <= edges[k+1]; the lowest edge belongs to the first bin.
    bins = np.clip(np.searchsorted(edges, x, side="left") - 1, 0, edges.size - 2)
    upper, lower = A.copy(), A.copy()
    upper[:, column] = edges[bins + 1]
    lower[:, column] = edges[bins]
    difference = np.asarray(predict(upper), dtype=np.float64) - np.asarray(
        predict(lower), dtype=np.float64
    )
    counts = np.bincount(bins, minlength=edges.size - 1).astype(np.int64)
    sums = np.bincount(bins, weights=difference, minlength=edges.size - 1)
    local = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    accumulated = np.concatenate([[0.0], np.cumsum(local)])
    # Centre: the mean effect over the rows, each bin at the mean of its two edges' values.
    midpoints = 0.5 * (accumulated[:-1] + accumulated[1:])
    centred = accumulated - float(np.sum(midpoints * counts) / counts.sum())
    return EffectCurve(variable, "ale", edges, centred, counts)


def _sample_rows(X: F32, max_rows: int, seed: int) -> F32:
    if X.shape[0] <= max_rows:
        return X.copy()
    picked = np.random.default_rng(seed).choice(X.shape[0], max_rows, replace=False)
    return X[np.sort(picked)]
