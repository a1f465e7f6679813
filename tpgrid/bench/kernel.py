"""Kernel throughput: every engine on the same float32 rows with the same number of threads.

Each engine is checked against scikit-learn once, then timed: best of ``repeats`` wall times,
engines taking turns within each repeat so that other work on the machine hits them alike.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tpgrid.bench.engines import (
    Engine,
    check_engine,
    peer_engines,
    reference_prediction,
    time_runs,
    tpgrid_engines,
)
from tpgrid.bench.settings import Log
from tpgrid.core.arrays import F32
from tpgrid.core.forest import pack_forest


@dataclass(frozen=True)
class EngineTiming:
    """One engine on one kind of rows: wall time of every repeat, and its checked error."""

    engine: str
    output: str
    peer: bool
    seconds: list[float]
    error: float


@dataclass(frozen=True)
class RowsResult:
    """Every engine on one kind of rows."""

    kind: str
    n_pixels: int
    n_trees: int
    visits_per_pixel_tree: float  # internal nodes passed per pixel and tree (path length)
    timings: list[EngineTiming]

    def ns_per_pixel_tree(self, engine: str) -> float:
        """Best wall time of ``engine`` in ns per pixel·tree."""
        timing = next(t for t in self.timings if t.engine == engine)
        return min(timing.seconds) * 1e9 / (self.n_pixels * self.n_trees)


@dataclass(frozen=True)
class KernelResult:
    forest: dict[str, Any]
    threads: int
    repeats: int
    skipped: dict[str, str]
    rows: list[RowsResult]


def kernel_benchmark(
    estimator: Any,
    pixels: Mapping[str, F32],
    *,
    threads: int = 2,
    repeats: int = 5,
    extra_engines: Sequence[Engine] = (),
    log: Log = lambda _: None,
) -> KernelResult:
    """Check, then time, every engine on each kind of rows in ``pixels`` (name → float32 X).

    ``extra_engines`` are checked and timed like the others (a test passes a wrong one).
    """
    packed = pack_forest(estimator)
    with ThreadPoolExecutor(threads) as pool:
        peers, skipped = peer_engines(estimator, pool, threads)
        engines = [*tpgrid_engines(packed, pool, threads), *peers, *extra_engines]
        results = []
        for kind, X in pixels.items():
            log(f"kernel, {kind} rows: checking {len(engines)} engines on {X.shape[0]:,} rows")
            reference = reference_prediction(estimator, X)
            errors = {e.name: check_engine(e, e.predict(X), reference) for e in engines}
            log(f"kernel, {kind} rows: timing, {repeats} repeats")
            seconds = time_runs({e.name: functools.partial(e.predict, X) for e in engines}, repeats)
            timings = [
                EngineTiming(e.name, e.output, e.peer, seconds[e.name], errors[e.name])
                for e in engines
            ]
            visits = mean_node_visits(estimator, X[:10_000])
            results.append(RowsResult(kind, X.shape[0], packed.n_trees, visits, timings))
    forest = {
        "n_trees": packed.n_trees,
        "n_nodes": packed.n_nodes,
        "n_features": packed.n_features,
        "max_depth": max(int(tree.get_depth()) for tree in estimator.estimators_),
        "packed_mib": round(packed.nbytes / 2**20, 2),
        "params": {
            k: v
            for k, v in estimator.get_params().items()
            if k in ("max_features", "min_samples_leaf", "max_depth", "bootstrap")
        },
    }
    return KernelResult(forest, threads, repeats, skipped, results)


def mean_node_visits(estimator: Any, X: F32) -> float:
    """Internal nodes a pixel passes per tree on average (the depth of the leaf it reaches)."""
    leaves = estimator.apply(X)  # (n, n_trees) scikit-learn node ids
    total = sum(
        int(_node_depths(tree.tree_)[leaves[:, t]].sum())
        for t, tree in enumerate(estimator.estimators_)
    )
    return total / max(int(leaves.size), 1)


def _node_depths(tree: Any) -> npt.NDArray[np.int64]:
    depth = np.zeros(tree.node_count, dtype=np.int64)
    level, d = np.array([0]), 0
    while level.size:
        depth[level] = d
        parents = level[tree.children_left[level] >= 0]
        level = np.concatenate([tree.children_left[parents], tree.children_right[parents]])
        d += 1
    return depth
