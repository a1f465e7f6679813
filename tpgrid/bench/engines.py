"""The ways to predict a forest that the kernel section times, each checked before it is timed.

tpgrid (and variants that show where its speed comes from) and the engines users would pick
instead: scikit-learn, ONNX Runtime via skl2onnx, treelite's GTIL. Every engine's answer is
compared with numpy's mean and variance of scikit-learn's per-tree predictions; an engine beyond
its tolerance raises :class:`~tpgrid.errors.EngineMismatchError`. An engine whose package is not
installed is skipped and named.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tpgrid.core.arrays import F32, F64
from tpgrid.core.forest import PackedForest, Walk
from tpgrid.errors import EngineMismatchError

#: An engine's answer for rows X: the mean per row, and the variance when it gives one.
Prediction = tuple[F64, F64 | None]

#: Largest error accepted, relative to the largest |mean| (and largest variance) of the rows:
#: float64 engines must agree to rounding; ONNX Runtime computes in float32.
EXACT, FLOAT32 = 1e-9, 1e-5
#: Rows of one per-tree prediction block (rows x 500 trees x 8 B stays near 80 MB).
_BLOCK_ROWS = 20_000


@dataclass(frozen=True)
class Engine:
    """A way to predict the forest: ``predict(X)`` gives the mean per row, and the variance
    when ``output`` is "mean+variance"; ``peer`` is False for tpgrid and its variants."""

    name: str
    output: Literal["mean+variance", "mean"]
    predict: Callable[[F32], Prediction]
    tolerance: float = EXACT
    peer: bool = True


def reference_prediction(estimator: Any, X: F32) -> tuple[F64, F64]:
    """numpy's mean and population variance of scikit-learn's per-tree predictions."""
    mean, variance = np.empty(X.shape[0]), np.empty(X.shape[0])
    for start in range(0, X.shape[0], _BLOCK_ROWS):
        rows = slice(start, start + _BLOCK_ROWS)
        per_tree = np.stack([tree.predict(X[rows]) for tree in estimator.estimators_], axis=1)
        mean[rows], variance[rows] = per_tree.mean(axis=1), per_tree.var(axis=1)
    return mean, variance


def check_engine(engine: Engine, got: Prediction, reference: tuple[F64, F64]) -> float:
    """The engine's largest error relative to the rows' value scale; raises
    :class:`EngineMismatchError` beyond ``engine.tolerance`` (the engine is then not timed)."""
    errors = [relative_error(got[0], reference[0])]
    if engine.output == "mean+variance":
        if got[1] is None:
            raise EngineMismatchError(f"engine {engine.name!r} gave no variance")
        errors.append(relative_error(got[1], reference[1]))
    worst = max(errors)
    if not worst <= engine.tolerance:
        raise EngineMismatchError(
            f"engine {engine.name!r} differs from scikit-learn's per-tree predictions by "
            f"{worst:.3g} of the value scale (tolerance {engine.tolerance:g}): it is not timed; "
            "check its version and conversion"
        )
    return worst


def relative_error(got: npt.ArrayLike, want: F64) -> float:
    """Largest |got - want| over the largest |want| (inf if shapes differ or got is not finite)."""
    got = np.asarray(got, dtype=np.float64).reshape(want.shape)
    scale = max(float(np.max(np.abs(want), initial=0.0)), np.finfo(np.float64).tiny)
    if got.shape != want.shape or not np.isfinite(got).all():
        return float("inf")
    return float(np.max(np.abs(got - want), initial=0.0) / scale)


def time_runs(runs: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of every repeat of each run (after one untimed call each). Runs take turns
    within each repeat, so a burst of other work hits them alike."""
    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def best_ns(run: Callable[[], object], pixel_trees: int, repeats: int) -> float:
    """The best of ``repeats`` timed calls of ``run`` (after one untimed call), in ns per
    pixel·tree of the ``pixel_trees`` it computes."""
    return round(min(time_runs({"run": run}, repeats)["run"]) * 1e9 / pixel_trees, 2)


def _split_rows(
    pool: ThreadPoolExecutor, threads: int, X: F32, fn: Callable[[F32], tuple[F64, F64]]
) -> tuple[F64, F64]:
    """``fn`` on ``threads`` contiguous parts of the rows at once (the kernels release the GIL)."""
    parts = list(pool.map(fn, np.array_split(X, threads)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def tpgrid_engines(packed: PackedForest, pool: ThreadPoolExecutor, threads: int) -> list[Engine]:
    """tpgrid as used by the prediction, and variants that show where its speed comes from."""

    def walked(walk: Walk, n: int) -> Callable[[F32], Prediction]:
        return lambda X: _split_rows(
            pool, n, X, lambda part: packed.predict_mean_variance(part, walk=walk)
        )

    return [
        Engine("tpgrid", "mean+variance", walked("auto", threads), peer=False),
        Engine("tpgrid, 1 thread", "mean+variance", walked("auto", 1), peer=False),
        Engine("tpgrid, packets only", "mean+variance", walked("packets", threads), peer=False),
        Engine("tpgrid, lockstep only", "mean+variance", walked("lockstep", threads), peer=False),
    ]


def peer_engines(
    estimator: Any, pool: ThreadPoolExecutor, threads: int
) -> tuple[list[Engine], dict[str, str]]:
    """The engines a user would pick instead, and those skipped (name → why)."""
    estimator.set_params(n_jobs=threads)

    def tree_loop(X: F32) -> tuple[F64, F64]:
        s1, s2 = np.zeros(X.shape[0]), np.zeros(X.shape[0])
        for tree in estimator.estimators_:
            p = tree.predict(X)
            s1 += p
            s2 += p * p
        n = len(estimator.estimators_)
        return s1 / n, np.maximum(s2 / n - (s1 / n) ** 2, 0.0)

    engines = [
        Engine("scikit-learn predict", "mean", lambda X: (estimator.predict(X), None)),
        Engine(
            "scikit-learn, loop over trees",
            "mean+variance",
            lambda X: _split_rows(pool, threads, X, tree_loop),
        ),
    ]
    skipped: dict[str, str] = {}
    for name, make in (("ONNX Runtime", _onnx_engines), ("treelite GTIL", _treelite_engines)):
        try:
            engines += make(estimator, threads)
        except ImportError as exc:
            skipped[name] = f'{exc.name or exc} is not installed: pip install "tpgrid[bench]"'
    return engines, skipped


def _onnx_engines(estimator: Any, threads: int) -> list[Engine]:
    import onnxruntime
    from skl2onnx import to_onnx

    model = to_onnx(
        estimator,
        np.zeros((1, estimator.n_features_in_), dtype=np.float32),
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name

    def predict(X: F32) -> Prediction:
        return np.asarray(session.run(None, {name: X})[0], dtype=np.float64).ravel(), None

    return [Engine("ONNX Runtime (skl2onnx)", "mean", predict, tolerance=FLOAT32)]


def _treelite_engines(estimator: Any, threads: int) -> list[Engine]:
    import treelite
    import treelite.gtil

    model = treelite.sklearn.import_model(estimator)

    def mean(X: F32) -> Prediction:
        return np.asarray(treelite.gtil.predict(model, X, nthread=threads)).ravel(), None

    def per_tree(X: F32) -> Prediction:
        m, v = np.empty(X.shape[0]), np.empty(X.shape[0])
        for start in range(0, X.shape[0], _BLOCK_ROWS):
            rows = slice(start, start + _BLOCK_ROWS)
            trees = treelite.gtil.predict_per_tree(model, X[rows], nthread=threads)
            trees = np.asarray(trees).reshape(X[rows].shape[0], -1)
            m[rows], v[rows] = trees.mean(axis=1), trees.var(axis=1)
        return m, v

    return [
        Engine("treelite GTIL", "mean", mean),
        Engine("treelite GTIL, per tree", "mean+variance", per_tree),
    ]
