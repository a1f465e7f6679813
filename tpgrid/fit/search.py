"""The hyperparameter search and the cross-validations of one element's forest.

A grid search picks hyperparameters by the out-of-bag error of forests that bootstrap whole
*sites* (:mod:`tpgrid.fit.oob`: triplicates of one site share their covariates, so no tree
predicts a site it drew); the winner is assessed by three k-fold CVs side by side — grouped by
site, by random sample (the leaky scheme the grouping prevents, for comparison) and by spatial
blocks — and refitted on all rows with the full number of trees. The grouped CV's fold tasks
also compute the report's held-out analyses, and the grouped and spatial ones the quantile
forest's held-out quantiles the intervals are calibrated on (:mod:`tpgrid.fit.heldout`). The
search blocks and CV fits are independent tasks on whatever Dask client is current (local
threads when there is none); the final forest is fitted here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tpgrid.core.arrays import F64, I64
from tpgrid.core.explain import predictor_columns
from tpgrid.core.metrics import cv_metrics, r2_score
from tpgrid.fit.heldout import HeldOutResults, fold_rows, held_out_fold, quantile_levels
from tpgrid.fit.oob import oob_forest_size, site_oob_search
from tpgrid.fit.settings import FitSettings
from tpgrid.tasks import Progress, task_runner

log = logging.getLogger(__name__)

# --- folds ---------------------------------------------------------------------------------


def group_folds(groups: npt.ArrayLike, n_folds: int, seed: int) -> I64:
    """Fold number (0 … n_folds − 1) of every row; all rows of a group share one fold.

    Groups are shuffled and dealt round-robin, so folds hold ⌊G/k⌋ or ⌈G/k⌉ groups. With one
    group per row this is plain random k-fold.
    """
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.size else 0
    if n_groups < n_folds:
        raise ValueError(f"{n_groups} groups cannot fill {n_folds} folds")
    order = np.random.default_rng(seed).permutation(n_groups)
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    fold_of_group[order] = np.arange(n_groups) % n_folds
    return fold_of_group[inverse.ravel()]


# --- fitting one element -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ElementFit:
    """What fitting one element produced: the fitted scikit-learn forest, out-of-fold
    predictions of each CV scheme (NaN where a scheme was skipped), folds, the grouped CV's
    held-out results, and the record."""

    estimator: Any
    predictions: dict[str, F64]
    folds: dict[str, I64 | None]
    held_out: HeldOutResults
    record: dict[str, Any]


def fit_forest(
    X: npt.NDArray[np.float32],
    y: F64,
    sites: npt.ArrayLike,
    blocks: I64,
    settings: FitSettings,
    column_variables: Sequence[str],
    *,
    local_threads: int | None = None,
    progress: Progress | None = None,
    label: str = "",
) -> ElementFit:
    """Search, assess and fit one element's forest on ``X`` (float32) and ``y`` (mg/kg).

    ``sites`` is the site of each row (bootstrap unit and CV groups), ``blocks`` its spatial
    block (of edge ``settings.spatial_block_km``: the settings are resolved, see
    :func:`tpgrid.fit.blocks.choose_blocks`), ``column_variables`` the predictor of each
    column of ``X`` (permutation importance shuffles a predictor's columns together). The
    search and the three CVs use ``settings.search_trees`` trees per forest; the final forest
    ``settings.n_trees``.
    """
    k, seed, trees = settings.cv_folds, settings.seed, settings.search_trees
    block_km = settings.spatial_block_km
    if block_km is None:
        raise ValueError("fit_forest needs resolved settings: the edge of the spatial blocks")
    _, site_index = np.unique(np.asarray(sites), return_inverse=True)
    site_index = site_index.ravel().astype(np.int64)
    grouped = group_folds(sites, k, seed)
    n_blocks = int(np.unique(blocks).size)
    assessed = {"random": group_folds(np.arange(y.size), k, seed)}
    if n_blocks >= 2:
        assessed["spatial"] = group_folds(blocks, min(k, n_blocks), seed)
    cv_warning = spatial_cv_warning(n_blocks, k, block_km)
    if cv_warning:
        log.warning("%s: %s", label, cv_warning)

    def report(stage: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(f"{label} {stage}".strip(), done, total)

    with task_runner(local_threads) as runner:
        X_shared, y_shared = runner.share(X, y)
        shared = (X_shared, y_shared)
        candidates = settings.search_grid.candidates()
        started = time.perf_counter()
        # As many trees per out-of-bag prediction as a CV forest has (see oob_forest_size).
        oob_trees = oob_forest_size(trees, int(site_index.max()) + 1)
        search = site_oob_search(
            runner, X_shared, y_shared, site_index, candidates, oob_trees, seed, report("search")
        )
        search_wall = time.perf_counter() - started
        scored = search.oob_trees > 0
        scores = [cv_metrics(y[scored], pred[scored]) for pred in search.predictions]
        best = int(np.argmin([score["rmse"] for score in scores]))
        params = candidates[best]

        # The winner's three CVs run on the cluster while the final forest is fitted here.
        variables = list(predictor_columns(column_variables))
        levels = quantile_levels(settings.interval_level)
        grouped_futures = [
            runner.submit(
                held_out_fold,
                *shared,
                grouped,
                f,
                params,
                trees,
                seed,
                list(column_variables),
                settings.importance_repeats,
                levels,
            )
            for f in range(k)
        ]
        # The random CV only scores the mean: its folds split sites, so no DI per fold.
        pending = {
            scheme: [
                runner.submit(
                    fold_rows,
                    *shared,
                    folds,
                    f,
                    params,
                    trees,
                    seed,
                    levels if scheme == "spatial" else (),
                )
                for f in range(int(folds.max()) + 1)
            ]
            for scheme, folds in assessed.items()
        }
        estimator = _final_forest(X, y, params, settings)
        grouped_results = runner.gather(grouped_futures, report("grouped"))
        rows = {
            scheme: runner.gather(scheme_futures, report(scheme))
            for scheme, scheme_futures in pending.items()
        }
        held_out = HeldOutResults.from_folds(
            grouped,
            grouped_results,
            variables,
            search.oob_trees,
            search.predictions,
            levels=levels,
            spatial=(assessed["spatial"], rows["spatial"]) if "spatial" in rows else None,
        )
        predictions = {"grouped": held_out.mean, "spatial": held_out.spatial_mean}
        predictions["random"] = _assemble(assessed["random"], [r.mean for r in rows["random"]])
        backend = runner.description

    record = {
        "hyperparameters": {
            "n_estimators": settings.n_trees,
            **params,
            "bootstrap": True,
            "random_state": seed,
        },
        "search": {
            "scheme": "out-of-bag error of forests bootstrapping whole sites",
            "trees_per_fit": oob_trees,
            "trees_per_fit_why": (
                f"a site is left out by ~37 % of the trees: {oob_trees} trees give each row "
                f"an out-of-bag prediction from ~{trees} trees, as many as a CV forest has"
            ),
            "selected_by": (
                "lowest out-of-bag RMSE; a row's out-of-bag prediction averages the trees whose "
                "bootstrap did not draw its site"
            ),
            "oob_trees_per_row": {
                "min": int(search.oob_trees.min()),
                "median": float(np.median(search.oob_trees)),
                "max": int(search.oob_trees.max()),
                "rows_without": int(np.sum(~scored)),
                "file": "held_out.npz (search_oob_trees)",
            },
            "candidates": [
                {"params": c, "r2": score["r2"], "rmse": score["rmse"]}
                for c, score in zip(candidates, scores, strict=True)
            ],
            "selected": params,
            "n_forests": len(candidates),
            "wall_s": round(search_wall, 3),
            "backend": backend,
        },
        "cv": _cv_record(y, predictions, k, n_blocks, block_km, settings, cv_warning),
        "held_out": {
            "from": "the grouped CV's fold forests, on the rows each did not see",
            "trees_per_forest": trees,
            "importance": {
                "measure": "%IncMSE, shuffles per predictor pooled over the folds",
                "n_repeats": settings.importance_repeats,
                "seed": seed,
            },
        },
        "fit": {
            "r2": r2_score(y, estimator.predict(X)),
            "oob_r2": float(estimator.oob_score_),
            "note": (
                "fit R² on the training rows; out-of-bag R² leaks like random CV when a "
                "site's samples are rows of their own"
            ),
        },
    }
    folds_by_scheme: dict[str, I64 | None] = {"grouped": grouped, "spatial": None, **assessed}
    return ElementFit(estimator, predictions, folds_by_scheme, held_out, record)


def spatial_cv_warning(n_blocks: int, n_folds: int, block_km: float) -> str | None:
    """What is wrong with a spatial CV over ``n_blocks`` blocks, naming the setting to change;
    None when every fold gets a block."""
    if n_blocks >= n_folds:
        return None
    fix = (
        "set a smaller fit.spatial_block_km in the pipeline YAML (or --block-km), or leave it "
        "unset to choose the edge from the sites"
    )
    if n_blocks < 2:
        return f"every site in one {block_km:g} km block, so no spatial CV: {fix}"
    return (
        f"only {n_blocks} spatial blocks of {block_km:g} km, so spatial CV has {n_blocks} "
        f"folds, not {n_folds}: {fix}"
    )


def _cv_record(
    y: F64,
    predictions: Mapping[str, F64],
    k: int,
    n_blocks: int,
    block_km: float,
    settings: FitSettings,
    warning: str | None,
) -> dict[str, Any]:
    """The three CVs side by side, with what each groups by."""
    spatial: dict[str, Any] = {
        "groups": f"{block_km:g} km blocks",
        "block_km": block_km,
        "n_blocks": n_blocks,
    }
    if n_blocks < 2:
        spatial["skipped"] = "all sites lie in one block: choose smaller blocks"
    else:
        spatial |= {"n_folds": min(k, n_blocks), **cv_metrics(y, predictions["spatial"])}
    if warning:
        spatial["warning"] = warning
    return {
        "trees_per_fit": settings.search_trees,
        "note": (
            "pooled out-of-fold metrics of the selected candidate; grouped holds out whole "
            "sites and is not the search's criterion (that is the site-bootstrap out-of-bag "
            "error), so it is not tuned on; random splits samples and lets a site's "
            "triplicates leak across folds, shown for comparison only"
        ),
        "grouped": {"groups": "site", "n_folds": k, **cv_metrics(y, predictions["grouped"])},
        "random": {"groups": "row", "n_folds": k, **cv_metrics(y, predictions["random"])},
        "spatial": spatial,
    }


def _assemble(folds: I64, fold_results: Sequence[F64]) -> F64:
    """Out-of-fold predictions in row order from per-fold test predictions."""
    out = np.full(folds.size, np.nan)
    for fold, values in enumerate(fold_results):
        out[folds == fold] = values
    return out


def _final_forest(
    X: npt.NDArray[np.float32], y: F64, params: Mapping[str, Any], settings: FitSettings
) -> Any:
    from sklearn.ensemble import RandomForestRegressor

    forest = RandomForestRegressor(
        n_estimators=settings.n_trees,
        oob_score=True,
        random_state=settings.seed,
        n_jobs=-1,
        **params,
    )
    return forest.fit(X, y)
