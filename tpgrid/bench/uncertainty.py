"""Uncertainty layers: what quantile and standard-error maps cost beside the mean and variance.

On the kernel section's forest and rows, with the same threads for every engine (rows split
over a thread pool, BLAS held to one thread per pool thread):

- tpgrid: mean + variance (:meth:`PackedForest.predict_mean_variance`, what maps use today),
  quantiles (:func:`tpgrid.core.quantiles.forest_quantiles`, weighted leaves) and the
  standard error's computation (:meth:`PackedForest.predict_trees` then
  :func:`tpgrid.core.jackknife.ij_variance`, in blocks of :data:`IJ_BLOCK_ROWS` rows);
- the libraries a user would pick instead, on the *same* fitted trees: quantile-forest's
  ``RandomForestQuantileRegressor(max_samples_leaf=None).predict(X, quantiles,
  weighted_leaves=True)`` and forestci's ``random_forest_error(forest, X_train.shape, X,
  inbag, calibrate=False)``. They are slow, so they are timed on the first ``rows_reference``
  rows only; ns per pixel·tree makes the figures comparable.

Before anything is timed, tpgrid's mean and variance are checked against scikit-learn's trees,
and each library's answer against tpgrid's on its rows: quantiles must be equal bit for bit,
standard errors within rounding. An engine that disagrees raises
:class:`~tpgrid.errors.EngineMismatchError`; a library that is not installed is skipped and
named.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from tpgrid.bench.engines import EXACT, reference_prediction, relative_error, time_runs
from tpgrid.bench.settings import Log
from tpgrid.core.arrays import F32, F64
from tpgrid.core.bootstrap import inbag_counts
from tpgrid.core.forest import PackedForest, pack_forest
from tpgrid.core.jackknife import ij_variance
from tpgrid.core.quantiles import forest_quantiles, leaf_membership
from tpgrid.errors import EngineMismatchError

#: Quantiles of the quantile maps, as issue 15 states them.
QUANTILES = (0.05, 0.5, 0.95)
#: Rows per block of per-tree predictions for the standard error (8,192 rows x 500 trees x
#: 8 B = 32 MB per thread): a chunk of 512² pixels cannot hold all of its trees' predictions
#: at once, so it works in blocks like these.
IJ_BLOCK_ROWS = 8192

Layer = Literal["mean+variance", "quantiles", "standard error"]
MEAN_VARIANCE: Final = "mean+variance"
QUANTILE_LAYER: Final = "quantiles"
STANDARD_ERROR: Final = "standard error"
#: tpgrid's engine for each layer; the libraries are checked against these.
TPGRID = {
    MEAN_VARIANCE: "tpgrid mean+variance",
    QUANTILE_LAYER: "tpgrid quantiles",
    STANDARD_ERROR: "tpgrid per-tree + IJ",
}
QUANTILE_FOREST, FORESTCI = "quantile-forest predict", "forestci random_forest_error"


@dataclass(frozen=True)
class LayerEngine:
    """A way to compute one layer for rows X: (n,) or (n, k) float64. ``peer`` engines (the
    libraries) run on the first ``rows_reference`` rows and must give tpgrid's answer there,
    to ``tolerance`` of its largest value (0: bit for bit)."""

    name: str
    layer: Layer
    compute: Callable[[F32], F64]
    peer: bool = False
    tolerance: float = 0.0


@dataclass(frozen=True)
class LayerTiming:
    """One engine on one kind of rows: how many rows it ran on, wall time of every repeat,
    and its checked error (against scikit-learn's trees for tpgrid's mean and variance,
    against tpgrid for a library; None for tpgrid's quantiles and standard error, which the
    libraries are checked against)."""

    engine: str
    layer: str
    peer: bool
    n_pixels: int
    seconds: list[float]
    error: float | None


@dataclass(frozen=True)
class UncertaintyRows:
    """Every engine on one kind of rows."""

    kind: str
    n_trees: int
    timings: list[LayerTiming]

    def ns_per_pixel_tree(self, engine: str) -> float:
        """Best wall time of ``engine`` in ns per pixel·tree, over the rows it ran on."""
        timing = next(t for t in self.timings if t.engine == engine)
        return min(timing.seconds) * 1e9 / (timing.n_pixels * self.n_trees)

    def has(self, engine: str) -> bool:
        return any(t.engine == engine for t in self.timings)


@dataclass(frozen=True)
class UncertaintyResult:
    forest: dict[str, Any]
    threads: int
    repeats: int
    quantiles: list[float]
    ij_block_rows: int
    skipped: dict[str, str]
    rows: list[UncertaintyRows]


def uncertainty_benchmark(
    estimator: Any,
    X_train: F32,
    y_train: F64,
    pixels: Mapping[str, F32],
    *,
    threads: int = 2,
    repeats: int = 5,
    rows_reference: int = 2000,
    quantiles: Sequence[float] = QUANTILES,
    extra_engines: Sequence[LayerEngine] = (),
    log: Log = lambda _: None,
) -> UncertaintyResult:
    """Check, then time, every engine on each kind of rows in ``pixels`` (name → float32 X).

    ``estimator`` is a fitted scikit-learn ``RandomForestRegressor`` (bootstrap, no sample
    weights) and ``X_train``, ``y_train`` exactly what it was fitted on. ``extra_engines`` are
    checked and timed like the others (a test passes a wrong one).
    """
    from threadpoolctl import threadpool_limits

    packed = pack_forest(estimator)
    log(f"uncertainty: leaf membership and in-bag counts of {X_train.shape[0]:,} training rows")
    membership = leaf_membership(estimator, X_train, y_train, packed)
    inbag = inbag_counts(estimator, X_train.shape[0]).astype(np.float64)
    q = list(quantiles)
    # One BLAS thread per pool thread: every engine gets its parallelism from the pool.
    with ThreadPoolExecutor(threads) as pool, threadpool_limits(limits=1, user_api="blas"):
        split = functools.partial(_split_rows, pool, threads)
        engines = [
            LayerEngine(
                TPGRID[MEAN_VARIANCE],
                MEAN_VARIANCE,
                split(lambda X: np.column_stack(packed.predict_mean_variance(X))),
            ),
            LayerEngine(
                TPGRID[QUANTILE_LAYER],
                QUANTILE_LAYER,
                split(lambda X: forest_quantiles(packed, membership, X, q)),
            ),
            LayerEngine(
                TPGRID[STANDARD_ERROR],
                STANDARD_ERROR,
                split(functools.partial(_tree_ij, packed, inbag)),
            ),
        ]
        peers, skipped = peer_engines(estimator, X_train, y_train, inbag, q, split)
        engines += [*peers, *extra_engines]
        results = []
        for kind, X in pixels.items():
            results.append(
                _time_rows(
                    kind, X, engines, estimator, packed.n_trees, repeats, rows_reference, log
                )
            )
    forest = {
        "n_trees": packed.n_trees,
        "n_nodes": packed.n_nodes,
        "n_features": packed.n_features,
        "n_train": int(X_train.shape[0]),
        "draws_per_leaf": round(
            float(membership.counts.sum() / np.count_nonzero(np.diff(membership.leaf_offsets))),
            2,
        ),
    }
    return UncertaintyResult(forest, threads, repeats, q, IJ_BLOCK_ROWS, skipped, results)


def _time_rows(
    kind: str,
    X: F32,
    engines: Sequence[LayerEngine],
    estimator: Any,
    n_trees: int,
    repeats: int,
    rows_reference: int,
    log: Log,
) -> UncertaintyRows:
    """Check every engine on ``X`` (a library on its first ``rows_reference`` rows), then
    time them, taking turns."""
    X_peer = X[:rows_reference]
    log(f"uncertainty, {kind} rows: checking {len(engines)} engines on {X.shape[0]:,} rows")
    answers = {e.name: e.compute(X) for e in engines if not e.peer}
    mean, variance = reference_prediction(estimator, X)
    mv_error = relative_error(answers[TPGRID[MEAN_VARIANCE]], np.column_stack((mean, variance)))
    if not mv_error <= EXACT:
        raise EngineMismatchError(
            f"tpgrid's mean and variance differ from scikit-learn's per-tree predictions by "
            f"{mv_error:.3g} of the value scale: nothing is timed"
        )
    errors: dict[str, float | None] = {e.name: None for e in engines if not e.peer}
    errors[TPGRID[MEAN_VARIANCE]] = mv_error
    for engine in (e for e in engines if e.peer):
        want = answers[TPGRID[engine.layer]][: X_peer.shape[0]]
        error = relative_error(engine.compute(X_peer), want)
        if not error <= engine.tolerance:
            raise EngineMismatchError(
                f"engine {engine.name!r} differs from {TPGRID[engine.layer]!r} by {error:.3g} "
                f"of the value scale (tolerance {engine.tolerance:g}): it is not timed; check "
                "its version and that it was built on the same trees"
            )
        errors[engine.name] = error
    log(
        f"uncertainty, {kind} rows: timing, {repeats} repeats "
        f"(libraries on {X_peer.shape[0]:,} rows)"
    )
    runs = {e.name: functools.partial(e.compute, X_peer if e.peer else X) for e in engines}
    seconds = time_runs(runs, repeats)
    timings = [
        LayerTiming(
            e.name,
            e.layer,
            e.peer,
            X_peer.shape[0] if e.peer else X.shape[0],
            seconds[e.name],
            errors[e.name],
        )
        for e in engines
    ]
    return UncertaintyRows(kind, n_trees, timings)


def _split_rows(
    pool: ThreadPoolExecutor, threads: int, fn: Callable[[F32], F64]
) -> Callable[[F32], F64]:
    """``fn`` on ``threads`` contiguous parts of the rows at once, the parts' answers joined
    (every engine here releases the GIL for most of its time)."""

    def run(X: F32) -> F64:
        parts = list(pool.map(fn, np.array_split(X, threads)))
        return np.concatenate(parts)

    return run


def _tree_ij(packed: PackedForest, inbag: F64, X: F32) -> F64:
    """The standard error's computation: per-tree predictions and their infinitesimal-jackknife
    variance, a block of rows at a time."""
    out = np.empty(X.shape[0])
    for start in range(0, X.shape[0], IJ_BLOCK_ROWS):
        rows = slice(start, start + IJ_BLOCK_ROWS)
        out[rows] = ij_variance(packed.predict_trees(X[rows]), inbag)
    return out


def peer_engines(
    estimator: Any,
    X_train: F32,
    y_train: F64,
    inbag: F64,
    quantiles: list[float],
    split: Callable[[Callable[[F32], F64]], Callable[[F32], F64]],
) -> tuple[list[LayerEngine], dict[str, str]]:
    """quantile-forest and forestci on ``estimator``'s trees, and those skipped (name → why)."""
    engines: list[LayerEngine] = []
    skipped: dict[str, str] = {}
    try:
        qrf = quantile_forest_on(estimator, X_train, y_train)
        engines.append(
            LayerEngine(
                QUANTILE_FOREST,
                QUANTILE_LAYER,
                split(
                    lambda X: np.asarray(
                        qrf.predict(X, quantiles=quantiles, weighted_leaves=True),
                        dtype=np.float64,
                    ).reshape(X.shape[0], -1)
                ),
                peer=True,
            )
        )
    except ImportError as exc:
        skipped[QUANTILE_FOREST] = _missing(exc)
    try:
        import forestci

        # forestci takes the trees' in-bag counts as given: the same counts tpgrid uses, found
        # once per model in a map, not per chunk.
        engines.append(
            LayerEngine(
                FORESTCI,
                STANDARD_ERROR,
                split(
                    lambda X: np.asarray(
                        forestci.random_forest_error(
                            estimator, X_train.shape, X, inbag=inbag, calibrate=False
                        ),
                        dtype=np.float64,
                    )
                ),
                peer=True,
                tolerance=EXACT,
            )
        )
    except ImportError as exc:
        skipped[FORESTCI] = _missing(exc)
    return engines, skipped


def _missing(exc: ImportError) -> str:
    return f'{exc.name or exc} is not installed: pip install "tpgrid[bench]"'


def quantile_forest_on(estimator: Any, X_train: F32, y_train: F64) -> Any:
    """quantile-forest's ``RandomForestQuantileRegressor(max_samples_leaf=None)`` on
    ``estimator``'s own fitted trees (not refitted): its hyperparameters and trees, then the
    steps quantile-forest's ``fit`` takes after scikit-learn's (1.4: sort the targets, map
    every leaf to its in-bag training rows). Single-threaded: the caller splits the rows."""
    import joblib
    from quantile_forest import RandomForestQuantileRegressor
    from quantile_forest._quantile_forest_fast import QuantileForest

    allowed = RandomForestQuantileRegressor().get_params()
    params = {k: v for k, v in estimator.get_params().items() if k in allowed}
    qrf = RandomForestQuantileRegressor(
        **params | {"max_samples_leaf": None, "n_jobs": 1, "oob_score": False}
    )
    for name in ("estimators_", "estimator_", "n_features_in_", "n_outputs_"):
        setattr(qrf, name, getattr(estimator, name))
    y = np.asarray(y_train, dtype=np.float64).reshape(-1, 1)
    sorter = np.argsort(y, axis=0)
    y_sorted = y[sorter[:, 0]]
    qrf.sample_weight_ = None
    leaves = qrf._get_y_train_leaves(X_train, y_sorted, sorter=sorter, sample_weight=None)
    bounds = qrf._get_y_bound_leaves(y_sorted, leaves)
    qrf.forest_ = QuantileForest(y_sorted.T, leaves, bounds, sparse_pickle=False)
    qrf.sorter_ = sorter
    qrf.n_train_samples_ = y_sorted.shape[0]
    qrf.X_train_hash_ = joblib.hash(X_train)
    qrf.unsampled_indices_ = None
    return qrf
