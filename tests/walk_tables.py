"""Per-tree reference tables for the kernel's walks: scikit-learn's per-tree predictions, and
the per-tree predictions one walk of the mean/variance kernel reaches, to compare bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np

from tpgrid.core.forest import PackedForest, Walk

WALKS: tuple[Walk, ...] = ("auto", "packets", "lockstep")


def sklearn_per_tree(estimators: list[Any], X: np.ndarray) -> np.ndarray:
    """(n_rows, n_trees) float64: each tree's ``predict`` of the estimators' trees in order;
    NaN for rows with a NaN (scikit-learn would route them, the kernels do not walk them)."""
    trees = [tree for e in estimators for tree in e.estimators_]
    if len(X) == 0:  # scikit-learn refuses to predict no rows
        return np.empty((0, len(trees)))
    nan_rows = np.isnan(X).any(axis=1)
    X_filled = np.where(nan_rows[:, None], 0, X).astype(X.dtype)
    table = np.column_stack([tree.predict(X_filled) for tree in trees])
    table[nan_rows] = np.nan
    return table


def per_tree_through_walk(forest: PackedForest, X: np.ndarray, walk: Walk) -> np.ndarray:
    """(n_rows, n_trees) float64: the value of the leaf each row reaches in each tree when the
    mean/variance kernel walks ``forest`` by ``walk``; NaN for rows with a NaN.

    The kernel returns only means over trees, so tree t's nodes are made to say which one was
    reached: their values become n_trees × (node − root) and every other tree's 0. The mean is
    then exactly the offset of tree t's leaf from its root (whole numbers add and divide
    exactly), while every tree is still walked as in a real forest, so `AUTO` times and picks
    as it would.
    """
    ends = np.append(forest.roots[1:], forest.n_nodes)
    arrays = forest.to_arrays()
    table = np.full((len(X), forest.n_trees), np.nan)
    for t, (root, end) in enumerate(zip(forest.roots, ends, strict=True)):
        value = np.zeros(forest.n_nodes)
        value[root:end] = forest.n_trees * np.arange(end - root)
        marked = PackedForest.from_arrays(arrays | {"value": value})
        offset, _ = marked.predict_mean_variance(X, walk=walk)
        walked = ~np.isnan(offset)
        leaf = root + offset[walked].astype(np.int64)
        assert np.array_equal(forest.left[leaf], leaf), f"{walk} stopped above a leaf"
        table[walked, t] = forest.value[leaf]
    return table
