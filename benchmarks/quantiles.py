"""Cost of quantile prediction per pixel·tree, against mean+variance and quantile-forest.

Fits quantile-forest's ``RandomForestQuantileRegressor(max_samples_leaf=None)`` on the reference
forest's training rows and settings (docs/performance.md: 1,600 rows × 18 covariates,
``max_features=1/3``), packs it, and times on the same rows, single-threaded:

- ``mean_variance``: `PackedForest.predict_mean_variance` (the kernel maps use today);
- ``quantiles``: `tpgrid.core.quantiles.forest_quantiles`;
- ``quantile_forest``: ``estimator.predict(X, quantiles, weighted_leaves=True)`` (n_jobs=1),
  after checking that it gives the same numbers as ``quantiles``.

Prints one JSON line of medians over ``--repeats`` runs, in ns per pixel·tree::

    python benchmarks/quantiles.py --trees 500 --rows 20000 --rows-qf 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from quantile_forest import RandomForestQuantileRegressor

from tpgrid.bench.inputs import coherent_rows, random_rows, reference_target
from tpgrid.core.forest import pack_forest
from tpgrid.core.quantiles import forest_quantiles, leaf_membership


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", type=int, default=500)
    parser.add_argument("--train-rows", type=int, default=1600)
    parser.add_argument("--min-samples-leaf", type=int, default=1)
    parser.add_argument("--rows", type=int, default=20_000, help="rows timed for tpgrid")
    parser.add_argument("--rows-qf", type=int, default=2_000, help="rows timed for quantile-forest")
    parser.add_argument("--rows-kind", choices=["random", "coherent"], default="random")
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.05, 0.5, 0.95])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    n_features = 18
    rng = np.random.default_rng(args.seed)
    X_train = rng.standard_normal((args.train_rows, n_features)).astype(np.float32)
    y_train = reference_target(X_train) + 0.2 * rng.standard_normal(args.train_rows)
    estimator = RandomForestQuantileRegressor(
        n_estimators=args.trees,
        max_features=1 / 3,
        min_samples_leaf=args.min_samples_leaf,
        max_samples_leaf=None,
        random_state=args.seed,
        n_jobs=1,
    ).fit(X_train, y_train)
    forest = pack_forest(estimator)
    start = time.perf_counter()
    membership = leaf_membership(estimator, X_train, y_train, forest)
    membership_seconds = time.perf_counter() - start

    make_rows = random_rows if args.rows_kind == "random" else coherent_rows
    X = make_rows(args.rows, n_features, args.seed)
    X_qf = X[: args.rows_qf]
    q = args.quantiles
    expected = estimator.predict(X_qf, quantiles=q, weighted_leaves=True)
    if not np.array_equal(forest_quantiles(forest, membership, X_qf, q), expected):
        raise SystemExit("forest_quantiles differs from quantile-forest")
    forest.predict_mean_variance(X[:100])  # compile/load the kernels before timing

    def per_pixel_tree(seconds: float, n_rows: int) -> float:
        return seconds / (n_rows * forest.n_trees) * 1e9

    mean_variance = median_seconds(lambda: forest.predict_mean_variance(X), args.repeats)
    quantiles = median_seconds(lambda: forest_quantiles(forest, membership, X, q), args.repeats)
    quantile_forest = median_seconds(
        lambda: estimator.predict(X_qf, quantiles=q, weighted_leaves=True), args.repeats
    )
    result = {
        "trees": forest.n_trees,
        "nodes": forest.n_nodes,
        "train_rows": args.train_rows,
        "min_samples_leaf": args.min_samples_leaf,
        "in_bag_draws_per_leaf": float(
            membership.counts.sum() / np.count_nonzero(np.diff(membership.leaf_offsets))
        ),
        "rows": args.rows_kind,
        "quantiles": q,
        "membership_bytes": sum(a.nbytes for a in membership.to_arrays().values()),
        "membership_seconds": round(membership_seconds, 3),
        "ns_per_pixel_tree": {
            "mean_variance": round(per_pixel_tree(mean_variance, args.rows), 2),
            "quantiles": round(per_pixel_tree(quantiles, args.rows), 2),
            "quantile_forest": round(per_pixel_tree(quantile_forest, args.rows_qf), 2),
        },
    }
    ns = result["ns_per_pixel_tree"]
    assert isinstance(ns, dict)
    result["quantiles_over_mean_variance"] = round(ns["quantiles"] / ns["mean_variance"], 2)
    result["quantile_forest_over_quantiles"] = round(ns["quantile_forest"] / ns["quantiles"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
