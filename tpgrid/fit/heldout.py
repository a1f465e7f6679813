"""The CV fold tasks, which also compute what the report and the interval calibration need
from forests that never saw a site: the grouped CV's every tree's prediction of the held-out
rows (interval coverage at any level) and the squared errors of permutation importance; every
scheme's mean, tree SD and quantile-forest quantiles of its held-out rows. A fold task returns
these small arrays rather than its forest, so the report refits nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from tpgrid.core.arrays import F64, I64
from tpgrid.core.explain import permutation_errors
from tpgrid.core.forest import PackedForest, pack_forest
from tpgrid.core.intervals import HeldOut
from tpgrid.core.quantiles import forest_quantiles, leaf_membership

#: Format of the held-out arrays (``to_arrays``); another number is refused on loading (and a
#: kept model whose held-out results have another is fitted again).
FORMAT_VERSION = 2
#: Quantile-forest levels every fold task predicts: those of the 90 % interval and the median.
QUANTILE_LEVELS = (0.05, 0.5, 0.95)


def quantile_levels(level: float) -> tuple[float, float, float]:
    """The quantile-forest levels of a central ``level`` interval, and the median."""
    tail = round((1.0 - level) / 2.0, 12)
    return (tail, 0.5, round(1.0 - tail, 12))


@dataclass(frozen=True, eq=False)
class FoldRows:
    """What one fold's forest predicts for its held-out rows: ``mean`` and ``sd`` over its
    trees and ``quantiles`` (n_held, n_levels) of the quantile forest, mg/kg."""

    mean: F64
    sd: F64
    quantiles: F64


@dataclass(frozen=True, eq=False)
class FoldResult:
    """What one grouped fold's forest says about its held-out rows: ``trees`` (n_held,
    n_trees) every tree's prediction, mg/kg; ``quantiles`` (n_held, n_levels) its quantile
    forest's; ``base_sse`` its squared error; ``sse`` (n_predictors, n_repeats) the squared
    error with each predictor shuffled."""

    trees: F64
    quantiles: F64
    base_sse: float
    sse: F64


def fold_forest(
    X: npt.NDArray[np.float32],
    y: F64,
    folds: I64,
    fold: int,
    params: Mapping[str, Any],
    n_trees: int,
    seed: int,
) -> tuple[Any, npt.NDArray[np.bool_]]:
    """The forest of one CV fold, fitted on the rows outside ``fold``, and which rows are in it."""
    from sklearn.ensemble import RandomForestRegressor

    test = folds == fold
    forest = RandomForestRegressor(n_estimators=n_trees, random_state=seed, n_jobs=1, **params)
    return forest.fit(X[~test], y[~test]), test


def _fold_quantiles(
    forest: Any,
    packed: PackedForest,
    X: npt.NDArray[np.float32],
    y: F64,
    test: npt.NDArray[np.bool_],
    levels: Sequence[float],
) -> F64:
    """The fold forest's quantiles (Meinshausen's weights, as the maps') of the rows in
    ``test``, from the leaves of the rows it was fitted on."""
    membership = leaf_membership(forest, X[~test], y[~test], packed)
    return forest_quantiles(packed, membership, X[test], np.asarray(levels, dtype=np.float64))


def fold_rows(
    X: npt.NDArray[np.float32],
    y: F64,
    folds: I64,
    fold: int,
    params: Mapping[str, Any],
    n_trees: int,
    seed: int,
    levels: Sequence[float] = QUANTILE_LEVELS,
) -> FoldRows:
    """Fit a forest on the rows outside ``fold`` and predict the rows inside it: mean, tree
    SD and the quantile forest at ``levels`` (no quantiles when empty). One CV task of the
    random and spatial schemes."""
    forest, test = fold_forest(X, y, folds, fold, params, n_trees, seed)
    packed = pack_forest(forest)
    mean, variance = packed.predict_mean_variance(X[test])
    quantiles = (
        _fold_quantiles(forest, packed, X, y, test, levels)
        if len(levels)
        else np.empty((int(test.sum()), 0))
    )
    return FoldRows(mean, np.sqrt(variance), quantiles)


def held_out_fold(
    X: npt.NDArray[np.float32],
    y: F64,
    folds: I64,
    fold: int,
    params: Mapping[str, Any],
    n_trees: int,
    seed: int,
    column_variables: Sequence[str],
    n_repeats: int,
    levels: Sequence[float] = QUANTILE_LEVELS,
) -> FoldResult:
    """Fit a forest on the rows outside ``fold`` and describe it on the rows inside (one task
    of the grouped CV). Trees and quantiles are predicted by the numba kernels, as the maps
    are; importance shuffles are those of ``permutation_importance(seed=seed)`` over the folds
    in order."""
    forest, test = fold_forest(X, y, folds, fold, params, n_trees, seed)
    packed = pack_forest(forest)

    def predict(A: npt.NDArray[np.float32]) -> F64:
        mean: F64 = packed.predict_mean_variance(A)[0]
        return mean

    sizes = np.bincount(folds, minlength=int(folds.max()) + 1).tolist()
    base, sse = permutation_errors(
        predict,
        X[test],
        y[test],
        column_variables,
        part=fold,
        part_sizes=sizes,
        n_repeats=n_repeats,
        seed=seed,
    )
    quantiles = _fold_quantiles(forest, packed, X, y, test, levels)
    return FoldResult(packed.predict_trees(X[test]), quantiles, base, sse)


#: The arrays of :class:`HeldOutResults` and their dtypes, as :meth:`~HeldOutResults.to_arrays`
#: writes them.
_ARRAYS: dict[str, type[np.generic]] = {
    "folds": np.int64,
    "trees": np.float64,
    "quantile_levels": np.float64,
    "quantiles": np.float64,
    "di": np.float64,
    "spatial_folds": np.int64,
    "spatial_mean": np.float64,
    "spatial_sd": np.float64,
    "spatial_quantiles": np.float64,
    "spatial_di": np.float64,
    "importance_base_sse": np.float64,
    "importance_sse": np.float64,
    "search_oob_trees": np.int64,
    "search_oob": np.float64,
}
#: The CV schemes whose held-out rows :class:`HeldOutResults` describes for the intervals.
INTERVAL_SCHEMES = ("grouped", "spatial")


@dataclass(frozen=True, eq=False)
class HeldOutResults:
    """The CVs' held-out results of one model, stored beside it (``held_out.npz``).

    Grouped CV: ``folds`` (n_rows) the fold of each row; ``trees`` (n_rows, n_trees) each
    tree's prediction of the row by the fold forest that did not see it; ``quantiles``
    (n_rows, n_levels) that forest's quantile-forest prediction at ``quantile_levels``;
    ``di`` the row's DI against that forest's training sites (NaN until
    :meth:`with_di`); ``importance_base_sse`` (n_folds) and ``importance_sse`` (n_folds,
    n_predictors, n_repeats): permutation importance's squared errors per fold, for the
    predictors ``variables`` (in ``predictor_columns`` order).

    Spatial CV, the same per row: ``spatial_folds`` (−1 everywhere when there was no spatial
    CV), ``spatial_mean``, ``spatial_sd``, ``spatial_quantiles``, ``spatial_di`` (NaN without).

    The search: ``search_oob_trees`` (n_rows) trees of each search forest that left the row's
    site out; ``search_oob`` (n_candidates, n_rows) its out-of-bag predictions.
    """

    folds: I64
    trees: F64
    quantile_levels: F64
    quantiles: F64
    di: F64
    spatial_folds: I64
    spatial_mean: F64
    spatial_sd: F64
    spatial_quantiles: F64
    spatial_di: F64
    importance_base_sse: F64
    importance_sse: F64
    variables: tuple[str, ...]
    search_oob_trees: I64
    search_oob: F64

    @classmethod
    def from_folds(
        cls,
        folds: I64,
        results: Sequence[FoldResult],
        variables: Sequence[str],
        search_oob_trees: I64,
        search_oob: F64,
        *,
        levels: Sequence[float] = QUANTILE_LEVELS,
        spatial: tuple[I64, Sequence[FoldRows]] | None = None,
    ) -> HeldOutResults:
        """Assemble the grouped folds' ``results`` and, if there was a spatial CV, its folds
        and fold rows (``spatial``), in row order; DI is NaN until :meth:`with_di`."""
        n = folds.size
        trees = np.full((n, results[0].trees.shape[1]), np.nan)
        quantiles = np.full((n, len(levels)), np.nan)
        for fold, result in enumerate(results):
            trees[folds == fold] = result.trees
            quantiles[folds == fold] = result.quantiles
        spatial_folds = np.full(n, -1, dtype=np.int64)
        spatial_mean, spatial_sd = np.full(n, np.nan), np.full(n, np.nan)
        spatial_quantiles = np.full((n, len(levels)), np.nan)
        if spatial is not None:
            spatial_folds = np.asarray(spatial[0], dtype=np.int64)
            for fold, rows in enumerate(spatial[1]):
                test = spatial_folds == fold
                spatial_mean[test], spatial_sd[test] = rows.mean, rows.sd
                spatial_quantiles[test] = rows.quantiles
        return cls(
            folds=folds,
            trees=trees,
            quantile_levels=np.asarray(levels, dtype=np.float64),
            quantiles=quantiles,
            di=np.full(n, np.nan),
            spatial_folds=spatial_folds,
            spatial_mean=spatial_mean,
            spatial_sd=spatial_sd,
            spatial_quantiles=spatial_quantiles,
            spatial_di=np.full(n, np.nan),
            importance_base_sse=np.array([r.base_sse for r in results]),
            importance_sse=np.stack([r.sse for r in results]),
            variables=tuple(variables),
            search_oob_trees=search_oob_trees,
            search_oob=search_oob,
        )

    def with_di(self, grouped: F64, spatial: F64 | None) -> HeldOutResults:
        """These results with each row's DI against its grouped (and spatial) fold forest's
        training sites."""
        return replace(
            self,
            di=np.asarray(grouped, dtype=np.float64),
            spatial_di=np.full(self.folds.size, np.nan) if spatial is None else spatial,
        )

    @property
    def mean(self) -> F64:
        """The grouped CV's out-of-fold prediction (mean over the trees), mg/kg."""
        result: F64 = self.trees.mean(axis=1)
        return result

    @property
    def has_spatial(self) -> bool:
        return bool(np.any(self.spatial_folds >= 0))

    def held_out(self, scheme: str, observed: F64, sites: I64) -> HeldOut:
        """One scheme's held-out rows for the interval calibration (``observed`` and
        ``sites`` row for row; the interval's quantiles are the lowest and highest level)."""
        if scheme == "grouped":
            mean, sd = self.mean, self.trees.std(axis=1)
            folds, quantiles, di = self.folds, self.quantiles, self.di
        elif scheme == "spatial":
            mean, sd, di = self.spatial_mean, self.spatial_sd, self.spatial_di
            folds, quantiles = self.spatial_folds, self.spatial_quantiles
        else:
            raise ValueError(f"no held-out intervals of the {scheme!r} CV")
        return HeldOut(
            scheme,
            folds=folds,
            sites=sites,
            observed=observed,
            mean=mean,
            sd=sd,
            q_low=quantiles[:, 0],
            q_high=quantiles[:, -1],
            di=di,
        )

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Plain arrays for ``np.savez`` (the predictor names as a unicode array: no pickle)."""
        return {
            "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
            **{name: np.asarray(getattr(self, name), dtype=t) for name, t in _ARRAYS.items()},
            "variables": np.array(self.variables, dtype=np.str_),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]]) -> HeldOutResults:
        """Rebuild from :meth:`to_arrays` output; ``ValueError`` when it is not that (another
        format version included)."""
        if "format_version" not in arrays:
            raise ValueError("not held-out results: no format version")
        if int(arrays["format_version"]) != FORMAT_VERSION:
            raise ValueError(f"held-out results format {int(arrays['format_version'])}")
        missing = {*_ARRAYS, "variables"} - set(arrays)
        if missing:
            raise ValueError(f"not held-out results: missing arrays {sorted(missing)}")
        n = arrays["folds"].size
        per_row = ("di", "spatial_folds", "spatial_mean", "spatial_sd", "spatial_di")
        if (
            arrays["trees"].ndim != 2
            or arrays["trees"].shape[0] != n
            or arrays["importance_sse"].ndim != 3
            or any(arrays[name].shape != (n,) for name in per_row)
            or any(
                arrays[name].shape != (n, arrays["quantile_levels"].size)
                for name in ("quantiles", "spatial_quantiles")
            )
        ):
            raise ValueError("held-out arrays of inconsistent shapes")
        return cls(
            **{name: np.asarray(arrays[name], dtype=t) for name, t in _ARRAYS.items()},
            variables=tuple(str(v) for v in arrays["variables"]),
        )
