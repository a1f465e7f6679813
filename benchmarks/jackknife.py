"""Time of the infinitesimal-jackknife variance per pixel and tree, tpgrid's against forestci's.

Fits one scikit-learn forest on synthetic rows, then times, on the same forest and map rows,
with BLAS held to one thread (a Dask worker computes one chunk per core):

- ``tpgrid``: :func:`tpgrid.core.jackknife.ij_variance` given the per-tree predictions;
- ``forestci_core``: forestci's own V_IJ and bias correction given the same predictions
  (``_core_computation`` + ``_bias_correction``, what ``random_forest_error`` runs on them);
- ``forestci``: ``forestci.random_forest_error(..., calibrate=False)`` end to end, which also
  predicts every tree with scikit-learn.

Prints one JSON line: the median of ``--repeats`` runs of each, in ns per pixel·tree, and the
largest relative difference of tpgrid's result from forestci's::

    python benchmarks/jackknife.py --n-train 1000 --trees 200 --rows 10000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import forestci
import numpy as np
from sklearn.ensemble import RandomForestRegressor
from threadpoolctl import threadpool_limits

from tpgrid.core.bootstrap import inbag_counts
from tpgrid.core.jackknife import ij_variance


def _median_s(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=1000, help="training rows")
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--rows", type=int, default=10000, help="map rows (pixels)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.n_train, 8))
    y = X[:, 0] ** 2 + X[:, 1] + rng.normal(scale=0.3, size=args.n_train)
    forest = RandomForestRegressor(n_estimators=args.trees, min_samples_leaf=3, random_state=0)
    forest.fit(X, y)
    X_map = rng.normal(size=(args.rows, 8))
    inbag = inbag_counts(forest, args.n_train)
    trees = np.stack([tree.predict(X_map) for tree in forest.estimators_], axis=1)
    centred = trees - trees.mean(axis=1, keepdims=True)

    def forestci_core() -> object:
        v_ij = forestci._core_computation(X.shape, X_map, inbag, centred, args.trees)
        return forestci._bias_correction(v_ij, inbag, centred, args.trees)

    with threadpool_limits(1):
        ours = ij_variance(trees, inbag)
        reference = forestci.random_forest_error(forest, X.shape, X_map, calibrate=False)
        timings = {
            "tpgrid": _median_s(lambda: ij_variance(trees, inbag), args.repeats),
            "forestci_core": _median_s(forestci_core, args.repeats),
            "forestci": _median_s(
                lambda: forestci.random_forest_error(forest, X.shape, X_map, calibrate=False),
                args.repeats,
            ),
        }
    scale = np.abs(reference).max()
    cells = args.rows * args.trees
    print(
        json.dumps(
            {
                "n_train": args.n_train,
                "trees": args.trees,
                "rows": args.rows,
                "ns_per_pixel_tree": {k: round(v / cells * 1e9, 2) for k, v in timings.items()},
                "max_abs_diff_over_max": float(np.abs(ours - reference).max() / scale),
            }
        )
    )


if __name__ == "__main__":
    main()
