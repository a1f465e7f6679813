"""Where the quantile layer's time goes, on the forest and rows of ``tpgrid bench``.

``tpgrid bench --section uncertainty`` times the layers; this splits them, one thread, best of
``--repeats``, in ns per pixel·tree:

- ``mean+variance``: `PackedForest.predict_mean_variance`, for scale;
- ``walk``, ``walk+weights``, ``walk+weights+quantiles``: the quantile kernel stopped after
  walking the tile to every tree's leaf, after adding each row's weights on the training
  samples (reading every leaf's entries), and whole. The stopped kernels are made from the
  source of `tpgrid.core._quantile_kernels.forest_quantiles` (two early exits inserted); the
  whole one is checked equal to ``forest_quantiles`` first;
- ``quantile-forest apply`` and ``quantile-forest predict`` on the first ``--rows-reference``
  rows: scikit-learn's ``apply`` (finding the leaves) inside quantile-forest's predict.

Prints one JSON line per kind of rows::

    python benchmarks/quantiles.py --forest plateau --rows 20000
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from tpgrid.bench import BenchSettings, quantile_forest_on, timed_forest
from tpgrid.bench.engines import best_ns
from tpgrid.bench.inputs import prepare_plateau
from tpgrid.core import _quantile_kernels
from tpgrid.core.forest import _WALKS, pack_forest
from tpgrid.core.quantiles import forest_quantiles, leaf_membership

QUANTILES = np.array([0.05, 0.5, 0.95])


def staged_kernel() -> Any:
    """``forest_quantiles`` with a last argument ``stage``: 0 returns after the walk, 1 after
    the weights (samples still gathered and cleared), 2 runs whole."""
    source = inspect.getsource(_quantile_kernels.forest_quantiles.py_func)
    steps = [
        ("weighted_leaves, walk,\n):", "weighted_leaves, walk, stage,\n):"),
        ("        for j in range(m):\n            row_leaves",
         "        if stage == 0:\n            continue\n        for j in range(m):\n"
         "            row_leaves"),
        ("            _weighted_quantiles(",
         "            if stage == 1:\n                continue\n            _weighted_quantiles("),
    ]  # fmt: skip
    for old, new in steps:
        if source.count(old) != 1:
            raise SystemExit(f"the quantile kernel changed: {old!r} is not in it once")
        source = source.replace(old, new)
    names = dict(vars(_quantile_kernels))
    exec(source.replace("@numba.njit(nogil=True, cache=True", "@numba.njit(nogil=True"), names)
    assert isinstance(names["forest_quantiles"], numba.core.registry.CPUDispatcher)
    return names["forest_quantiles"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--forest", choices=["plateau", "reference"], default="plateau")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache/tpgrid/bench")
    parser.add_argument("--size", default="full")
    parser.add_argument("--element", default="Fe")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rows-reference", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = BenchSettings(
        workdir=args.workdir, size=args.size, seed=args.seed, forest=args.forest,
        element=args.element, rows=args.rows, sections=("uncertainty",),
    )  # fmt: skip
    inputs = None
    if args.forest == "plateau":
        inputs = prepare_plateau(args.workdir, args.size, args.seed, lambda _: None)
    timed = timed_forest(settings, inputs)
    packed = pack_forest(timed.estimator)
    m = leaf_membership(timed.estimator, timed.X_train, timed.y_train, packed)
    qrf = quantile_forest_on(timed.estimator, timed.X_train, timed.y_train)
    staged = staged_kernel()
    order = np.argsort(QUANTILES, kind="stable").astype(np.int64)
    trees = packed.n_trees
    with threadpool_limits(1):
        for kind, X in timed.pixels.items():

            def stage(s: int, X: np.ndarray = X) -> Callable[[], object]:
                return lambda: staged(
                    X, packed.feature, packed.threshold, packed.left, packed.roots,
                    packed.lockstep_levels, packed.child_feature, m.leaf_code, m.entries,
                    m.y_train, QUANTILES, order, True, _WALKS["auto"], s,
                )  # fmt: skip

            if not np.array_equal(stage(2)(), forest_quantiles(packed, m, X, QUANTILES)):
                raise SystemExit("the staged kernel differs from forest_quantiles")
            X_ref = X[: args.rows_reference]
            cells, cells_ref = X.shape[0] * trees, X_ref.shape[0] * trees
            ns = {
                "mean+variance": best_ns(
                    lambda X=X: packed.predict_mean_variance(X), cells, args.repeats
                ),
                "walk": best_ns(stage(0), cells, args.repeats),
                "walk+weights": best_ns(stage(1), cells, args.repeats),
                "walk+weights+quantiles": best_ns(stage(2), cells, args.repeats),
                "quantile-forest apply": best_ns(
                    lambda X=X_ref: qrf.apply(X), cells_ref, args.repeats
                ),
                "quantile-forest predict": best_ns(
                    lambda X=X_ref: qrf.predict(X, quantiles=list(QUANTILES), weighted_leaves=True),
                    cells_ref,
                    args.repeats,
                ),
            }
            draws = m.counts.sum() / np.count_nonzero(np.diff(m.leaf_offsets))
            print(
                json.dumps(
                    {
                        "forest": args.forest,
                        "rows": kind,
                        "pixels": X.shape[0],
                        "pixels_reference": X_ref.shape[0],
                        "trees": trees,
                        "draws_per_leaf": round(float(draws), 2),
                        "ns_per_pixel_tree": ns,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
