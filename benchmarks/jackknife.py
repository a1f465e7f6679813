"""Where the standard error's time goes, on the forest and rows of ``tpgrid bench``, and what
walking the trees a tile at a time would save.

``tpgrid bench --section uncertainty`` times the standard error as a map would compute it
(per-tree predictions, then `tpgrid.core.jackknife.ij_variance`, in blocks of rows). This
splits it, one thread, best of ``--repeats``, in ns per pixel·tree, on blocks of
``IJ_BLOCK_ROWS`` rows:

- ``mean+variance``: `PackedForest.predict_mean_variance`, for scale;
- ``per-tree predictions``: `PackedForest.predict_trees` (each row walks every tree in turn);
- ``per-tree predictions, tiled``: a prototype, not in tpgrid: the same predictions through
  the tiled walks the mean+variance and quantile kernels use (each tree read once per tile of
  rows), checked equal to ``predict_trees`` bit for bit first;
- ``ij_variance``: the jackknife given the per-tree predictions (Gram matrix included);
- ``forestci, tree predictions`` and ``forestci, given predictions``: forestci's
  ``random_forest_error`` splits the same way (scikit-learn's per-tree ``predict``; its own
  V_IJ and bias correction), on the first ``--rows-reference`` rows.

Prints one JSON line per kind of rows::

    python benchmarks/jackknife.py --forest plateau
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import forestci
import numba
import numpy as np
from threadpoolctl import threadpool_limits

from tpgrid.bench import BenchSettings, timed_forest
from tpgrid.bench.inputs import prepare_plateau
from tpgrid.bench.uncertainty import IJ_BLOCK_ROWS
from tpgrid.core._kernels import LANES, _u, _walk_tree, tile_rows
from tpgrid.core.bootstrap import inbag_counts
from tpgrid.core.forest import _WALKS, pack_forest
from tpgrid.core.jackknife import ij_variance


@numba.njit(nogil=True)
def tiled_tree_predictions(X, feature, threshold, left, value, roots, levels, child_feature, walk):  # type: ignore[no-untyped-def]
    """Every tree's prediction per row, float64 (n, n_trees), the rows walked a tile at a time
    through one tree after the other (as `forest_quantiles` walks them, with the leaf values
    as what the walk reports)."""
    n, n_features = X.shape
    n_trees = roots.shape[0]
    out = np.empty((n, n_trees), dtype=np.float64)
    rows_per_tile = min(tile_rows(n_features), max(1, (n + LANES - 1) // LANES) * LANES)
    stride = _u(rows_per_tile)
    tile = np.empty(rows_per_tile * n_features, dtype=np.float32)
    rows = np.empty(rows_per_tile, dtype=np.int64)
    leaf_value = np.empty(rows_per_tile, dtype=np.float64)
    node = np.empty(rows_per_tile, dtype=np.uint32)
    active = np.empty(rows_per_tile, dtype=np.uint32)
    stack_node = np.empty(LANES, dtype=np.uint64)
    stack_mask = np.empty(LANES, dtype=np.uint64)
    spent = np.empty(2, dtype=np.uint64)
    i = 0
    while i < n:
        m = 0
        while i < n and m < rows_per_tile:
            finite = True
            for f in range(n_features):
                finite &= not np.isnan(X[i, f])
                tile[f * rows_per_tile + m] = X[i, f]
            if finite:
                rows[m] = i
                m += 1
            else:
                out[i, :] = np.nan
            i += 1
        spent[:] = 0
        for t in range(n_trees):
            _walk_tree(
                t, walk, spent, tile, stride, m, roots, levels, feature, threshold, left,
                child_feature, value, leaf_value, node, active, stack_node, stack_mask,
            )  # fmt: skip
            for j in range(m):
                out[rows[j], t] = leaf_value[j]
    return out


def best_ns(run: Callable[[], object], pixel_trees: int, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return round(min(times) * 1e9 / pixel_trees, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--forest", choices=["plateau", "reference"], default="plateau")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache/tpgrid/bench")
    parser.add_argument("--size", default="full")
    parser.add_argument("--element", default="Fe")
    parser.add_argument("--rows-reference", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = BenchSettings(
        workdir=args.workdir, size=args.size, seed=args.seed, forest=args.forest,
        element=args.element, rows=IJ_BLOCK_ROWS, sections=("uncertainty",),
    )  # fmt: skip
    inputs = None
    if args.forest == "plateau":
        inputs = prepare_plateau(args.workdir, args.size, args.seed, lambda _: None)
    timed = timed_forest(settings, inputs)
    p = pack_forest(timed.estimator)
    inbag = inbag_counts(timed.estimator, timed.X_train.shape[0]).astype(np.float64)
    shape = timed.X_train.shape
    estimators = timed.estimator.estimators_
    with threadpool_limits(1):
        for kind, X in timed.pixels.items():

            def tiled(X: np.ndarray = X) -> np.ndarray:
                return tiled_tree_predictions(  # type: ignore[no-any-return]
                    X, p.feature, p.threshold, p.left, p.value, p.roots, p.lockstep_levels,
                    p.child_feature, _WALKS["auto"],
                )  # fmt: skip

            trees = p.predict_trees(X)
            if not np.array_equal(tiled(), trees):
                raise SystemExit("the tiled per-tree predictions differ from predict_trees")
            X_ref = X[: args.rows_reference]
            ref_trees = np.stack([t.predict(X_ref) for t in timed.estimator.estimators_], axis=1)
            centred = ref_trees - ref_trees.mean(axis=1, keepdims=True)

            def forestci_core(centred: np.ndarray = centred, X_ref: np.ndarray = X_ref) -> object:
                v_ij = forestci._core_computation(shape, X_ref, inbag, centred, p.n_trees)
                return forestci._bias_correction(v_ij, inbag, centred, p.n_trees)

            cells, cells_ref = X.shape[0] * p.n_trees, X_ref.shape[0] * p.n_trees
            ns = {
                "mean+variance": best_ns(
                    lambda X=X: p.predict_mean_variance(X), cells, args.repeats
                ),
                "per-tree predictions": best_ns(
                    lambda X=X: p.predict_trees(X), cells, args.repeats
                ),
                "per-tree predictions, tiled": best_ns(tiled, cells, args.repeats),
                "ij_variance": best_ns(
                    lambda trees=trees: ij_variance(trees, inbag), cells, args.repeats
                ),
                "forestci, tree predictions": best_ns(
                    lambda X=X_ref: [t.predict(X) for t in estimators], cells_ref, args.repeats
                ),
                "forestci, given predictions": best_ns(forestci_core, cells_ref, args.repeats),
            }
            print(
                json.dumps(
                    {
                        "forest": args.forest,
                        "rows": kind,
                        "pixels": X.shape[0],
                        "pixels_reference": X_ref.shape[0],
                        "trees": p.n_trees,
                        "n_train": shape[0],
                        "ns_per_pixel_tree": ns,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
