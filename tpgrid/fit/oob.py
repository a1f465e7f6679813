"""The hyperparameter search's error estimate: out-of-bag predictions with sites, not rows, as
the bootstrap's unit.

Each tree of a candidate's forest is fitted on a bootstrap sample of whole *sites* (every row
of a drawn site, weighted by how often the site was drawn) and predicts the rows of the sites
it did not draw. A row's out-of-bag prediction averages only those trees, so no site is ever
predicted by a tree that saw it or its triplicates: honest like CV grouped by site, at the cost
of one forest per candidate instead of one per fold. Tree ``t`` draws the same sites and gets
the same random state for every candidate (common random numbers: candidates are compared on
the same bootstraps), and a block of trees is one task, so the result does not depend on how
the trees are shared among tasks or workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tpgrid.core.arrays import F64, I64
from tpgrid.tasks import TaskRunner

#: Trees per task: enough to amortise a task's overhead, few enough that a small search still
#: makes several tasks per worker.
TREES_PER_TASK = 25


def oob_forest_size(n_trees: int, n_sites: int) -> int:
    """Trees of a site-bootstrap forest whose out-of-bag predictions average ``n_trees`` trees
    per row on average. A tree leaves a site out with probability (1 − 1/n)ⁿ ≈ 0.37: an
    out-of-bag error of a forest of ``n_trees`` trees would be that of a forest of ~0.37 times
    as many, which favours candidates whose trees are individually stronger but more alike
    (a larger ``max_features``) over those a larger forest averages better."""
    left_out = (1.0 - 1.0 / n_sites) ** n_sites
    return max(1, math.ceil(n_trees / left_out))


def site_draws(n_sites: int, seed: int, tree: int) -> tuple[I64, int]:
    """How often tree ``tree``'s bootstrap draws each of ``n_sites`` sites (``n_sites`` draws
    with replacement), and the tree's own random state (for its choice of split columns)."""
    rng = np.random.default_rng([seed, tree])
    counts = np.bincount(rng.integers(0, n_sites, n_sites), minlength=n_sites).astype(np.int64)
    return counts, int(rng.integers(0, 2**31 - 1))


def grow_tree(
    X: npt.NDArray[np.float32],
    y: F64,
    site_index: I64,
    params: Mapping[str, Any],
    seed: int,
    tree: int,
) -> tuple[Any, I64]:
    """Tree ``tree`` of a site-bootstrap forest with hyperparameters ``params``
    (``RandomForestRegressor`` keywords), fitted on the rows of its drawn sites with the draw
    counts as sample weights (as scikit-learn's forests weight a row bootstrap); and the draw
    count of each row's site (0: the row is out of bag). ``site_index`` numbers each row's site
    0 … n_sites − 1."""
    from sklearn.tree import DecisionTreeRegressor

    n_sites = int(site_index.max()) + 1
    counts, random_state = site_draws(n_sites, seed, tree)
    weight = counts[site_index]
    drawn = weight > 0
    fitted = DecisionTreeRegressor(random_state=random_state, **params)
    fitted.fit(X[drawn], y[drawn], sample_weight=weight[drawn].astype(np.float64))
    return fitted, weight


def oob_block(
    X: npt.NDArray[np.float32],
    y: F64,
    site_index: I64,
    params: Mapping[str, Any],
    seed: int,
    trees: Sequence[int],
) -> tuple[F64, I64]:
    """One task: grow ``trees`` and return, per row, the sum of the out-of-bag predictions of
    those trees that did not draw the row's site, and how many such trees there are."""
    sums = np.zeros(y.size)
    counts = np.zeros(y.size, dtype=np.int64)
    for tree in trees:
        fitted, weight = grow_tree(X, y, site_index, params, seed, tree)
        out = weight == 0
        sums[out] += fitted.predict(X[out])
        counts[out] += 1
    return sums, counts


@dataclass(frozen=True, eq=False)
class OobSearch:
    """Out-of-bag predictions (n_candidates, n_rows) of every candidate, NaN where no tree
    left the row's site out; ``oob_trees``: per row, how many trees did (the same for every
    candidate, whose trees draw the same sites)."""

    predictions: F64
    oob_trees: I64


def site_oob_search(
    runner: TaskRunner,
    X: Any,
    y: Any,
    site_index: I64,
    candidates: Sequence[Mapping[str, Any]],
    n_trees: int,
    seed: int,
    report: Callable[[int, int], None] | None = None,
) -> OobSearch:
    """Every candidate's site-bootstrap forest of ``n_trees`` trees, grown in blocks of
    :data:`TREES_PER_TASK` trees as tasks of ``runner`` (``X``, ``y`` as it shared them)."""
    n_blocks = max(1, -(-n_trees // TREES_PER_TASK))
    blocks = [range(b, n_trees, n_blocks) for b in range(n_blocks)]
    futures = [
        runner.submit(oob_block, X, y, site_index, params, seed, block)
        for params in candidates
        for block in blocks
    ]
    results = runner.gather(futures, report)
    n_rows = site_index.size
    predictions = np.full((len(candidates), n_rows), np.nan)
    oob_trees = np.zeros(n_rows, dtype=np.int64)
    for c in range(len(candidates)):
        parts = results[c * n_blocks : (c + 1) * n_blocks]
        sums = np.sum([part[0] for part in parts], axis=0)
        counts = np.sum([part[1] for part in parts], axis=0)
        seen = counts > 0
        predictions[c, seen] = sums[seen] / counts[seen]
        oob_trees = counts
    return OobSearch(predictions, oob_trees)
