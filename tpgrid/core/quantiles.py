"""Quantile regression forest (Meinshausen 2006) on a packed forest.

A row's conditional distribution is the weighted distribution of the training targets in the
leaves it reaches. `leaf_membership` records, once after the fit, which training samples each
leaf holds and how often each was drawn into the tree's bootstrap sample; `forest_quantiles`
walks the packed forest per row and reads quantiles off that distribution.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tpgrid.core import _quantile_kernels
from tpgrid.core.bootstrap import inbag_counts
from tpgrid.core.forest import (
    _WALKS,
    PackedForest,
    Walk,
    kernel_cache_lock,
    pack_forest,
    stump_forest,
    warm_up_kernels,
)

_ARRAY_DTYPES: dict[str, type[np.generic]] = {
    "leaf_offsets": np.int64,
    "samples": np.int32,
    "counts": np.int32,
    "y_train": np.float64,
    "train_index": np.int64,
}
_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class LeafMembership:
    """The in-bag training samples of every leaf of a packed forest, in CSR layout.

    - ``leaf_offsets``: int64 [n_nodes + 1]; node k (a `PackedForest` node index) holds entries
      ``leaf_offsets[k]:leaf_offsets[k + 1]`` of the two arrays below; internal nodes hold none.
    - ``samples``: int32, position of each held sample in ``y_train``.
    - ``counts``: int32 >= 1, how often the sample was drawn into the tree's bootstrap sample
      (1 for every sample of a forest fitted without bootstrap).
    - ``y_train``: float64 [n_train], the training targets in ascending order. Equal targets keep
      the order ``np.argsort`` gives them, which quantile-forest uses too (it decides which of
      equal targets a quantile interpolates towards, hence the exact match).
    - ``train_index``: int64 [n_train], the row of the training table each target came from.

    Derived, not stored, in the layout the kernel reads (one cache line per leaf, mostly):
    ``entries`` (int64) holds per leaf a header ``draws << 32 | n_samples`` followed by one
    ``count << 32 | sample`` per sample; ``leaf_code`` (float64 [n_nodes]) is the header's index
    at leaves (-1 elsewhere), what the walk reports for a leaf in place of its value.
    """

    leaf_offsets: npt.NDArray[np.int64]
    samples: npt.NDArray[np.int32]
    counts: npt.NDArray[np.int32]
    y_train: npt.NDArray[np.float64]
    train_index: npt.NDArray[np.int64]
    entries: npt.NDArray[np.int64] = field(init=False, repr=False)
    leaf_code: npt.NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name, dtype in _ARRAY_DTYPES.items():
            array = getattr(self, name)
            if array.dtype != dtype or array.ndim != 1 or not array.flags.c_contiguous:
                raise ValueError(
                    f"LeafMembership.{name} must be a 1-D C-contiguous {dtype.__name__}"
                )
            array.flags.writeable = False
        # The kernel does no bounds checks: refuse arrays that would make it read outside.
        offsets, n_train = self.leaf_offsets, self.y_train.shape[0]
        if offsets.shape[0] < 2 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise ValueError("LeafMembership.leaf_offsets must start at 0 and not decrease")
        if offsets[-1] != self.samples.shape[0] or self.counts.shape[0] != self.samples.shape[0]:
            raise ValueError("LeafMembership.samples and counts must have leaf_offsets[-1] entries")
        if self.samples.size and (self.samples.min() < 0 or self.samples.max() >= n_train):
            raise ValueError(f"LeafMembership.samples must be in [0, {n_train})")
        if self.counts.size and self.counts.min() < 1:
            raise ValueError("LeafMembership.counts must be >= 1")
        if np.any(np.diff(self.y_train) < 0) or np.isnan(self.y_train).any():
            raise ValueError("LeafMembership.y_train must be ascending and NaN-free")
        if self.train_index.shape[0] != n_train:
            raise ValueError("LeafMembership.train_index must have one entry per target")
        entries, leaf_code = self._kernel_layout()
        for array in (entries, leaf_code):
            array.flags.writeable = False
        object.__setattr__(self, "entries", entries)
        object.__setattr__(self, "leaf_code", leaf_code)

    def _kernel_layout(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """``entries`` and ``leaf_code`` (see the class docstring) from the CSR arrays."""
        n_nodes = self.leaf_offsets.shape[0] - 1
        n_samples = np.diff(self.leaf_offsets)
        held = np.flatnonzero(n_samples)
        leaf_of = np.repeat(np.arange(n_nodes), n_samples)
        draws = np.bincount(leaf_of, self.counts, n_nodes).astype(np.int64)
        # Header of the i-th held leaf: after i headers and the samples of the leaves before.
        header = np.arange(held.size) + self.leaf_offsets[held]
        entries = np.empty(held.size + self.samples.size, dtype=np.int64)
        entries[header] = (draws[held] << 32) | n_samples[held]
        is_sample = np.ones(entries.size, dtype=bool)
        is_sample[header] = False
        entries[is_sample] = (self.counts.astype(np.int64) << 32) | self.samples
        leaf_code = np.full(n_nodes, -1.0)
        leaf_code[held] = header
        return entries, leaf_code

    @property
    def n_nodes(self) -> int:
        """Number of nodes of the packed forest this membership belongs to."""
        return int(self.leaf_offsets.shape[0] - 1)

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The membership as a dict of plain arrays, for ``np.savez`` (no pickle needed)."""
        arrays: dict[str, npt.NDArray[Any]] = {name: getattr(self, name) for name in _ARRAY_DTYPES}
        arrays["format_version"] = np.array(_FORMAT_VERSION, dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> LeafMembership:
        """Rebuild a membership from `to_arrays` output (or a loaded ``.npz``)."""
        missing = {*_ARRAY_DTYPES, "format_version"} - set(arrays)
        if missing:
            raise ValueError(f"not a leaf membership: missing arrays {sorted(missing)}")
        version = int(arrays["format_version"])
        if version != _FORMAT_VERSION:
            raise ValueError(f"leaf membership format {version} is not {_FORMAT_VERSION}")
        return cls(**{name: np.ascontiguousarray(arrays[name]) for name in _ARRAY_DTYPES})

    def save_npz(self, path: str | Path) -> None:
        """Write the membership to an uncompressed ``.npz``."""
        np.savez(path, allow_pickle=False, **self.to_arrays())

    @classmethod
    def load_npz(cls, path: str | Path) -> LeafMembership:
        """Read a membership written by `save_npz`; never unpickles."""
        with np.load(path, allow_pickle=False) as data:
            return cls.from_arrays({name: data[name] for name in data.files})


def leaf_membership(
    estimator: Any, X: npt.ArrayLike, y: npt.ArrayLike, forest: PackedForest | None = None
) -> LeafMembership:
    """The leaf membership of a fitted forest, from the ``X`` and ``y`` it was fitted on.

    ``estimator`` is anything `pack_forest` packs (including quantile-forest's
    ``RandomForestQuantileRegressor``), fitted on exactly ``X``, ``y`` without sample weights.
    Leaves are found by walking ``forest`` (packed here if not given), so they are addressed by
    the node index the packed walk reaches.
    """
    packed = pack_forest(estimator) if forest is None else forest
    X32 = np.require(X, dtype=np.float32, requirements=["C", "W"])
    y64 = np.asarray(y, dtype=np.float64)
    if X32.ndim != 2 or X32.shape[1] != packed.n_features or y64.shape != (X32.shape[0],):
        raise ValueError(
            f"X must be (n, {packed.n_features}) and y (n,): got {X32.shape}, {y64.shape}"
        )
    if np.isnan(X32).any() or np.isnan(y64).any():
        raise ValueError("X and y must be NaN-free, as the forest was fitted on them")
    n = y64.shape[0]
    # The (n, 1) column sorted as quantile-forest sorts it, so equal targets get its order.
    train_index = np.argsort(y64[:, None], axis=0)[:, 0].astype(np.int64)
    position = np.empty(n, dtype=np.int64)
    position[train_index] = np.arange(n)

    leaves = _quantile_kernels.forest_leaves(
        X32, packed.feature, packed.threshold, packed.left, packed.roots
    )
    counts = inbag_counts(estimator, n).T
    tree, row = np.nonzero(counts)  # tree-major: each tree's in-bag rows
    node = leaves[row, tree].astype(np.int64)
    by_node = np.lexsort((position[row], node))  # per leaf, samples in ascending y
    offsets = np.zeros(packed.n_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(node, minlength=packed.n_nodes), out=offsets[1:])
    return LeafMembership(
        leaf_offsets=offsets,
        samples=position[row[by_node]].astype(np.int32),
        counts=counts[tree[by_node], row[by_node]],
        y_train=np.ascontiguousarray(y64[train_index]),
        train_index=train_index,
    )


def forest_quantiles(
    forest: PackedForest,
    membership: LeafMembership,
    X: npt.ArrayLike,
    quantiles: npt.ArrayLike,
    weighted_leaves: bool = True,
    walk: Walk = "auto",
    trees: int | None = None,
) -> npt.NDArray[np.float64]:
    """Quantiles of each row's conditional distribution: float64 (n_rows, n_quantiles).

    Row x gives training sample i the weight ``sum_b c_b(i) / n_b(x)`` over trees b, where
    ``c_b(i)`` is i's in-bag count in x's leaf of tree b and ``n_b(x)`` that leaf's total in-bag
    count (Meinshausen's weights, times T; with ``weighted_leaves=False`` the weight is
    ``sum_b c_b(i)``), and reads each quantile off the weighted targets.

    Equal, number for number, to quantile-forest 1.4's
    ``RandomForestQuantileRegressor(max_samples_leaf=None).predict(X, quantiles,
    weighted_leaves=weighted_leaves)`` on the same fitted trees, with its other defaults
    (``interpolation="linear"``, ``weighted_quantile=True``, ``aggregate_leaves_first=True``);
    tests/test_quantiles.py checks it. Not matched: quantile-forest's default
    ``max_samples_leaf=1`` (one randomly kept sample per leaf, a different estimator), its
    other interpolations, ``aggregate_leaves_first=False``, out-of-bag prediction and sample
    weights. Its default ``weighted_leaves=False`` is matched by passing False here; the default
    here is True because that is Meinshausen's forest.

    ``X`` is (n_rows, n_features), cast to float32; rows with a NaN covariate give NaN.
    ``quantiles`` are in [0, 1]. ``walk`` is as in `PackedForest.predict_mean_variance`: it
    changes the speed, never the result. Every leaf reached must hold a draw (as every leaf of
    a fitted forest does). ``trees`` takes the quantile forest of the first ``trees`` trees
    only (None: all): equal to quantile-forest's forest of that many trees fitted with the same
    ``random_state``, whose trees are the first ones of the larger forest; its cost is in
    proportion.
    """
    if membership.n_nodes != forest.n_nodes:
        raise ValueError(
            f"the membership has {membership.n_nodes} nodes, the forest {forest.n_nodes}"
        )
    X32 = np.require(X, dtype=np.float32, requirements=["C", "W"])
    if X32.ndim != 2 or X32.shape[1] != forest.n_features:
        raise ValueError(f"X must be (n_rows, {forest.n_features}), got shape {X32.shape}")
    q = np.require(np.atleast_1d(np.asarray(quantiles, dtype=np.float64)), requirements=["C", "W"])
    if q.ndim != 1 or q.size == 0 or np.isnan(q).any() or q.min() < 0 or q.max() > 1:
        raise ValueError("quantiles must be a non-empty 1-D list of numbers in [0, 1]")
    if membership.y_train.size == 0:
        raise ValueError("the membership holds no training targets")
    n_trees = forest.n_trees if trees is None else trees
    if not 1 <= n_trees <= forest.n_trees:
        raise ValueError(f"trees must be in [1, {forest.n_trees}], got {trees}")
    leaves = membership.leaf_offsets[1:] > membership.leaf_offsets[:-1]
    if np.any(leaves != (forest.left == np.arange(forest.n_nodes))):
        raise ValueError("the membership's leaves are not the forest's leaves")
    warm_up_kernels()  # the walks it shares, under the cache lock
    return _quantile_kernels.forest_quantiles(  # type: ignore[no-any-return]
        X32,
        forest.feature,
        forest.threshold,
        forest.left,
        forest.roots[:n_trees],
        forest.lockstep_levels[:n_trees],
        forest.child_feature,
        membership.leaf_code,
        membership.entries,
        membership.y_train,
        q,
        np.argsort(q, kind="stable").astype(np.int64),
        weighted_leaves,
        _WALKS[walk],
    )


@functools.cache
def warm_up_quantile_kernels() -> None:
    """Compile the quantile kernels, or load them from numba's on-disk cache, once per process,
    one process at a time (as :func:`~tpgrid.core.forest.warm_up_kernels`, which it runs
    first): each Dask worker as it joins, when the run computes quantiles."""
    warm_up_kernels()  # its own lock: taken before ours, never inside it
    stump = stump_forest()
    membership = LeafMembership(
        leaf_offsets=np.array([0, 0, 1, 2], dtype=np.int64),
        samples=np.array([0, 1], dtype=np.int32),
        counts=np.ones(2, dtype=np.int32),
        y_train=np.array([0.0, 1.0]),
        train_index=np.array([0, 1], dtype=np.int64),
    )
    X = np.zeros((1, 1), dtype=np.float32)
    with kernel_cache_lock():
        _quantile_kernels.forest_leaves(X, stump.feature, stump.threshold, stump.left, stump.roots)
        forest_quantiles(stump, membership, X, [0.5])
