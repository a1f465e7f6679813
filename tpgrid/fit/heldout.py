"""The grouped CV's fold task, which also computes what the report needs from forests that
never saw a site: every tree's prediction of the held-out rows (interval coverage and the
calibrated ``k`` at any level) and the squared errors of permutation importance. A fold task
returns these small arrays rather than its forest, so the report refits nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tpgrid.core.arrays import F64, I64
from tpgrid.core.explain import permutation_errors
from tpgrid.core.forest import pack_forest

#: Format of the held-out arrays (``to_arrays``); another number is refused on loading.
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class FoldResult:
    """What one grouped fold's forest says about its held-out rows: ``trees`` (n_held,
    n_trees) every tree's prediction, mg/kg; ``base_sse`` its squared error; ``sse``
    (n_predictors, n_repeats) the squared error with each predictor shuffled."""

    trees: F64
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
) -> FoldResult:
    """Fit a forest on the rows outside ``fold`` and describe it on the rows inside (one task
    of the grouped CV). Trees are predicted by the numba kernel, as the maps are; importance
    shuffles are those of ``permutation_importance(seed=seed)`` over the folds in order."""
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
    return FoldResult(packed.predict_trees(X[test]), base, sse)


@dataclass(frozen=True, eq=False)
class HeldOutResults:
    """The grouped CV's held-out results of one model, stored beside it (``held_out.npz``).

    ``folds`` (n_rows) the grouped fold of each row; ``trees`` (n_rows, n_trees) each tree's
    prediction of the row by the fold forest that did not see it; ``importance_base_sse``
    (n_folds) and ``importance_sse`` (n_folds, n_predictors, n_repeats): permutation
    importance's squared errors per fold, for the predictors ``variables`` (in
    ``predictor_columns`` order); ``search_oob_trees`` (n_rows): trees of each search forest
    that left the row's site out; ``search_oob`` (n_candidates, n_rows): the search's
    out-of-bag predictions.
    """

    folds: I64
    trees: F64
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
    ) -> HeldOutResults:
        trees = np.full((folds.size, results[0].trees.shape[1]), np.nan)
        for fold, result in enumerate(results):
            trees[folds == fold] = result.trees
        return cls(
            folds=folds,
            trees=trees,
            importance_base_sse=np.array([r.base_sse for r in results]),
            importance_sse=np.stack([r.sse for r in results]),
            variables=tuple(variables),
            search_oob_trees=search_oob_trees,
            search_oob=search_oob,
        )

    @property
    def mean(self) -> F64:
        """The grouped CV's out-of-fold prediction (mean over the trees), mg/kg."""
        result: F64 = self.trees.mean(axis=1)
        return result

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Plain arrays for ``np.savez`` (the predictor names as a unicode array: no pickle)."""
        return {
            "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
            "folds": np.asarray(self.folds, dtype=np.int64),
            "trees": np.asarray(self.trees, dtype=np.float64),
            "importance_base_sse": np.asarray(self.importance_base_sse, dtype=np.float64),
            "importance_sse": np.asarray(self.importance_sse, dtype=np.float64),
            "variables": np.array(self.variables, dtype=np.str_),
            "search_oob_trees": np.asarray(self.search_oob_trees, dtype=np.int64),
            "search_oob": np.asarray(self.search_oob, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]]) -> HeldOutResults:
        """Rebuild from :meth:`to_arrays` output; ``ValueError`` when it is not that."""
        names = {
            "format_version",
            "folds",
            "trees",
            "importance_base_sse",
            "importance_sse",
            "variables",
            "search_oob_trees",
            "search_oob",
        }
        missing = names - set(arrays)
        if missing:
            raise ValueError(f"not held-out results: missing arrays {sorted(missing)}")
        if int(arrays["format_version"]) != FORMAT_VERSION:
            raise ValueError(f"held-out results format {int(arrays['format_version'])}")
        folds, trees = arrays["folds"], arrays["trees"]
        sse = arrays["importance_sse"]
        if trees.ndim != 2 or trees.shape[0] != folds.size or sse.ndim != 3:
            raise ValueError("held-out arrays of inconsistent shapes")
        return cls(
            folds=np.asarray(folds, dtype=np.int64),
            trees=np.asarray(trees, dtype=np.float64),
            importance_base_sse=np.asarray(arrays["importance_base_sse"], dtype=np.float64),
            importance_sse=np.asarray(sse, dtype=np.float64),
            variables=tuple(str(v) for v in arrays["variables"]),
            search_oob_trees=np.asarray(arrays["search_oob_trees"], dtype=np.int64),
            search_oob=np.asarray(arrays["search_oob"], dtype=np.float64),
        )
