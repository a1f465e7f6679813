"""Where the standard error's time goes, on the forest and rows of ``tpgrid bench``.

``tpgrid bench --section uncertainty`` times the standard error as a map would compute it
(per-tree predictions, then `tpgrid.core.jackknife.ij_variance`, in blocks of rows). This
splits it, one thread, best of ``--repeats``, in ns per pixel·tree, on blocks of
``IJ_BLOCK_ROWS`` rows:

- ``mean+variance``: `PackedForest.predict_mean_variance`, for scale;
- ``per-tree predictions``: `PackedForest.predict_trees` (the tiled walks of the mean+variance
  kernel, each leaf value kept);
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
from pathlib import Path

import forestci
import numpy as np
from threadpoolctl import threadpool_limits

from tpgrid.bench import BenchSettings, timed_forest
from tpgrid.bench.engines import best_ns
from tpgrid.bench.inputs import prepare_plateau
from tpgrid.bench.uncertainty import IJ_BLOCK_ROWS
from tpgrid.core.bootstrap import inbag_counts
from tpgrid.core.forest import pack_forest
from tpgrid.core.jackknife import ij_variance


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
            trees = p.predict_trees(X)
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
