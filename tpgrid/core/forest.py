"""Compile a fitted scikit-learn forest into flat node arrays for the numba kernels.

The packed forest is plain numpy arrays (no pickle, no Python objects), so it can be saved to
an ``.npz``, hashed, and shipped to Dask workers once.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tpgrid.core import _kernels
from tpgrid.lock import workdir_lock

#: Array fields of `PackedForest`, in hashing and saving order, with their dtypes.
_ARRAY_DTYPES: dict[str, type[np.generic]] = {
    "feature": np.int16,
    "threshold": np.float32,
    "left": np.int32,
    "value": np.float64,
    "roots": np.int32,
}
_FORMAT_VERSION = 1
Walk = Literal["auto", "packets", "lockstep"]
_WALKS: dict[str, int] = {
    "auto": _kernels.AUTO,
    "packets": _kernels.PACKETS,
    "lockstep": _kernels.LOCKSTEP,
}
#: Levels below the shallowest leaf still walked without leaf checks (tuned on the reference
#: forest of docs/performance.md).
EXTRA_LOCKSTEP_LEVELS = 8


@dataclass(frozen=True, eq=False)
class PackedForest:
    """All trees of one single-output regression forest in flat node arrays.

    Node layout (one entry per node, trees stored one after the other, n_nodes in total):

    - ``feature``: int16, covariate column tested at the node; 0 at leaves.
    - ``threshold``: float32, go left when ``x <= threshold``; +inf at leaves. It is the
      scikit-learn float64 threshold rounded *down* to float32, so ``x <= threshold`` gives
      exactly scikit-learn's decision for every float32 ``x``.
    - ``left``: int32, global index of the left child; the right child is ``left + 1`` (children
      are adjacent), so one step is ``k = left[k] + (x[feature[k]] > threshold[k])``. A leaf
      points to itself (``left[k] == k``), which together with the +inf threshold makes a step
      from a leaf stay on it.
    - ``value``: float64, the node's prediction (scikit-learn's ``tree_.value``); only read at
      leaves.
    - ``roots``: int32 [n_trees], global index of each tree's root. Within a tree, nodes are in
      breadth-first order.
    - ``n_features``: number of covariate columns the forest was fitted on.

    ``lockstep_levels`` (int32 [n_trees]) is derived, not stored: how many levels the kernel
    walks every row through before it starts looking for leaves. The arrays are made read-only
    and checked so that the kernels, which do no bounds checks, stay inside them.
    """

    feature: npt.NDArray[np.int16]
    threshold: npt.NDArray[np.float32]
    left: npt.NDArray[np.int32]
    value: npt.NDArray[np.float64]
    roots: npt.NDArray[np.int32]
    n_features: int
    lockstep_levels: npt.NDArray[np.int32] = field(init=False, repr=False)
    child_feature: npt.NDArray[np.uint64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = self.feature.shape[0]
        for name, dtype in _ARRAY_DTYPES.items():
            array = getattr(self, name)
            if array.dtype != dtype or array.ndim != 1 or not array.flags.c_contiguous:
                raise ValueError(f"PackedForest.{name} must be a 1-D C-contiguous {dtype.__name__}")
            if name != "roots" and array.shape[0] != n:
                raise ValueError(f"PackedForest.{name} has {array.shape[0]} entries, not {n}")
            array.flags.writeable = False
        if self.roots.shape[0] == 0:
            raise ValueError("PackedForest needs at least one tree")
        # The kernels do no bounds checks: refuse arrays that would make them read out of
        # bounds or loop forever (every child comes after its one parent; leaves stay put).
        nodes = np.arange(n)
        internal = self.left != nodes
        if np.any(internal & ((self.left <= nodes) | (self.left >= n - 1))):
            raise ValueError("PackedForest.left has a child index out of order or out of range")
        children = self.left[internal]
        if np.any(np.bincount(children, minlength=n)[:n] > 1):
            raise ValueError("PackedForest.left gives a node two parents")
        if np.any(self.threshold[~internal] != np.inf):
            raise ValueError("PackedForest.threshold must be +inf at leaves")
        if n and (self.feature.min() < 0 or self.feature.max() >= self.n_features):
            raise ValueError(f"PackedForest.feature must be in [0, {self.n_features})")
        if self.roots.min() < 0 or self.roots.max() >= n:
            raise ValueError("PackedForest.roots points outside the node arrays")
        object.__setattr__(self, "lockstep_levels", _lockstep_levels(self.left, self.roots))
        # Left child and feature of each node in one word (child << 32 | feature): the lockstep
        # walk then loads two cache lines per step instead of three.
        child_feature = (self.left.astype(np.uint64) << np.uint64(32)) | self.feature.astype(
            np.uint64
        )
        child_feature.flags.writeable = False
        object.__setattr__(self, "child_feature", child_feature)

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return int(self.roots.shape[0])

    @property
    def n_nodes(self) -> int:
        """Number of nodes (internal and leaves) over all trees."""
        return int(self.feature.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory taken by the node arrays, in bytes."""
        return sum(int(getattr(self, name).nbytes) for name in _ARRAY_DTYPES)

    def predict_mean_variance(
        self, X: npt.ArrayLike, walk: Walk = "auto"
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Mean and population variance (ddof=0) over the trees, per row of ``X``.

        ``X`` is (n_pixels, n_features); it is cast to float32 as scikit-learn does. Rows with
        any NaN covariate get NaN mean and NaN variance. ``walk`` picks how the kernel walks the
        trees (see `tpgrid.core._kernels`): "auto" times both walks and keeps the faster; "packets"
        or "lockstep" forces one. The results are identical; only the speed changes.
        """
        X32 = self._as_input(X)
        warm_up_kernels()
        return _kernels.forest_mean_variance(  # type: ignore[no-any-return, call-arg]
            X32, *self._walked(), _WALKS[walk]
        )

    def predict_trees(self, X: npt.ArrayLike, walk: Walk = "auto") -> npt.NDArray[np.float64]:
        """Every tree's prediction, (n_pixels, n_trees) float64; NaN rows give NaN. ``walk`` as
        in :meth:`predict_mean_variance`: it changes the speed, never the result."""
        X32 = self._as_input(X)
        warm_up_kernels()
        return _kernels.forest_tree_predictions(  # type: ignore[no-any-return, call-arg]
            X32, *self._walked(), _WALKS[walk]
        )

    def _walked(self) -> tuple[npt.NDArray[Any], ...]:
        """The arrays every walk of `tpgrid.core._kernels` takes, in its argument order."""
        return (
            self.feature,
            self.threshold,
            self.left,
            self.value,
            self.roots,
            self.lockstep_levels,
            self.child_feature,
        )

    def _as_input(self, X: npt.ArrayLike) -> npt.NDArray[np.float32]:
        # Writable too: a read-only X is another argument type, which numba would compile (and
        # write to its cache) again, outside `warm_up_kernels`'s lock.
        X32 = np.require(X, dtype=np.float32, requirements=["C", "W"])
        if X32.ndim != 2:
            raise ValueError(f"X must be 2-D (n_pixels, n_features), got shape {X32.shape}")
        if X32.shape[1] != self.n_features:
            raise ValueError(
                f"X has {X32.shape[1]} feature columns but the forest was fitted on "
                f"{self.n_features}"
            )
        return X32

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (e.g. scattered to Dask workers) as plain arrays and rebuilt through the
        # checks, so every copy has read-only arrays: the kernels then see one argument type
        # and are compiled once per process.
        return (PackedForest.from_arrays, (self.to_arrays(),))

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The forest as a dict of plain arrays, for ``np.savez`` (no pickle needed)."""
        arrays: dict[str, npt.NDArray[Any]] = {name: getattr(self, name) for name in _ARRAY_DTYPES}
        arrays["n_features"] = np.array(self.n_features, dtype=np.int64)
        arrays["format_version"] = np.array(_FORMAT_VERSION, dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> PackedForest:
        """Rebuild a forest from `to_arrays` output (or a loaded ``.npz``)."""
        missing = {*_ARRAY_DTYPES, "n_features", "format_version"} - set(arrays)
        if missing:
            raise ValueError(f"not a packed forest: missing arrays {sorted(missing)}")
        version = int(arrays["format_version"])
        if version != _FORMAT_VERSION:
            raise ValueError(f"packed forest format {version} is not {_FORMAT_VERSION}")
        fields = {name: np.ascontiguousarray(arrays[name]) for name in _ARRAY_DTYPES}
        return cls(n_features=int(arrays["n_features"]), **fields)

    def save_npz(self, path: str | Path) -> None:
        """Write the forest to an uncompressed ``.npz``."""
        np.savez(path, allow_pickle=False, **self.to_arrays())

    @classmethod
    def load_npz(cls, path: str | Path) -> PackedForest:
        """Read a forest written by `save_npz`; never unpickles."""
        with np.load(path, allow_pickle=False) as data:
            return cls.from_arrays({name: data[name] for name in data.files})

    def content_hash(self) -> str:
        """SHA-256 hex digest over every array's dtype, shape and bytes, and n_features."""
        digest = hashlib.sha256()
        for name, array in self.to_arrays().items():
            digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()


@functools.cache
def warm_up_kernels() -> None:
    """Compile both kernels for `PackedForest`'s argument types, or load them from numba's
    on-disk cache (~3 s cold, ~0.3 s cached), once per process: each Dask worker as it joins
    (`tpgrid.predict.KernelWarmUp`), any other process at its first prediction.

    Processes sharing numba's cache directory do this one at a time: the first compiles and
    writes the cache, the others then load it (see docs/kernel-cache.md).
    """
    stump = stump_forest()
    X = np.zeros((1, 1), dtype=np.float32)
    with kernel_cache_lock():
        _kernels.forest_mean_variance(
            X, stump.feature, stump.threshold, stump.left, stump.value, stump.roots,
            stump.lockstep_levels, stump.child_feature, _kernels.AUTO,
        )  # fmt: skip
        _kernels.forest_tree_predictions(
            X, stump.feature, stump.threshold, stump.left, stump.value, stump.roots,
            stump.lockstep_levels, stump.child_feature, _kernels.AUTO,
        )  # fmt: skip


def stump_forest() -> PackedForest:
    """A forest of one tree of one split on one feature: what warming a kernel up walks."""
    return PackedForest(
        feature=np.zeros(3, dtype=np.int16),
        threshold=np.array([0.0, np.inf, np.inf], dtype=np.float32),
        left=np.array([1, 1, 2], dtype=np.int32),
        value=np.array([0.0, -1.0, 1.0]),
        roots=np.zeros(1, dtype=np.int32),
        n_features=1,
    )


@contextmanager
def kernel_cache_lock() -> Iterator[None]:
    """Hold the lock of numba's cache directory of the kernels (``tpgrid/core``'s): numba
    rewrites its cache index unlocked, so concurrent writers can cross entries."""
    cache_path = _kernels.forest_mean_variance.stats.cache_path  # every kernel's directory
    with ExitStack() as stack:
        if cache_path is not None:
            with suppress(OSError):  # a filesystem without locks: unlocked, as numba alone
                stack.enter_context(workdir_lock(Path(cache_path), wait=True, on_wait=_quiet))
        yield


def _quiet(message: str) -> None:
    """Waiting for another process's warm-up is normal: nothing to say."""


def _lockstep_levels(
    left: npt.NDArray[np.int32], roots: npt.NDArray[np.int32]
) -> npt.NDArray[np.int32]:
    """Per tree: the shallowest leaf's depth + `EXTRA_LOCKSTEP_LEVELS`, capped at the tree depth.

    Above the shallowest leaf no row can have stopped, so looking for leaves there is wasted;
    a few levels more still cost less than the checks they save. Any value gives the same
    predictions.
    """
    n_trees = roots.shape[0]
    min_leaf = np.full(n_trees, -1, dtype=np.int64)
    max_depth = np.zeros(n_trees, dtype=np.int64)
    nodes, tree = roots.astype(np.int64), np.arange(n_trees)
    depth = 0
    while nodes.size:  # one level of every tree at a time
        internal = left[nodes] != nodes
        max_depth[tree] = depth
        with_leaf = tree[~internal]
        min_leaf[with_leaf[min_leaf[with_leaf] < 0]] = depth
        children = left[nodes[internal]].astype(np.int64)
        nodes = np.concatenate([children, children + 1])
        tree = np.concatenate([tree[internal], tree[internal]])
        depth += 1
    return np.minimum(min_leaf + EXTRA_LOCKSTEP_LEVELS, max_depth).astype(np.int32)


def float32_at_or_below(t64: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """The largest float32 ``<= t64``, elementwise.

    For float32 ``x``, ``x <= t64`` holds iff ``x <= float32_at_or_below(t64)``.
    """
    t32 = t64.astype(np.float32)
    up = t32.astype(np.float64) > t64
    t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
    return t32


def pack_forest(estimator: Any) -> PackedForest:
    """Pack a fitted single-output ``RandomForestRegressor`` or ``ExtraTreesRegressor``, or a
    subclass of their base (such as quantile-forest's, whose trees are scikit-learn's)."""
    from sklearn.ensemble._forest import ForestRegressor

    if not isinstance(estimator, ForestRegressor):
        raise TypeError(
            f"expected a RandomForestRegressor or ExtraTreesRegressor, got {type(estimator)}"
        )
    if not hasattr(estimator, "estimators_"):
        raise ValueError("the forest is not fitted")
    if estimator.n_outputs_ != 1:
        raise ValueError(f"only single-output forests can be packed, not {estimator.n_outputs_}")
    n_features = int(estimator.n_features_in_)
    if n_features > np.iinfo(np.int16).max:
        raise ValueError(f"at most {np.iinfo(np.int16).max} features, got {n_features}")

    trees = [_pack_tree(tree.tree_) for tree in estimator.estimators_]
    sizes = np.array([t[0].shape[0] for t in trees], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if sizes.sum() > np.iinfo(np.int32).max:
        raise ValueError(f"{sizes.sum()} nodes do not fit int32 node indices")
    return PackedForest(
        feature=np.concatenate([t[0] for t in trees]).astype(np.int16),
        threshold=np.concatenate([t[1] for t in trees]),
        left=np.concatenate([t[2] + s for t, s in zip(trees, starts, strict=True)]).astype(
            np.int32
        ),
        value=np.concatenate([t[3] for t in trees]),
        roots=starts.astype(np.int32),
        n_features=n_features,
    )


def _pack_tree(
    tree: Any,
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float64]
]:
    """One sklearn tree in breadth-first order: (feature, threshold, left, value), local indices.

    Breadth-first order puts both children of a node next to each other, and keeps the top
    levels, which every pixel visits, together in a few cache lines.
    """
    children_left = tree.children_left
    children_right = tree.children_right
    n = children_left.shape[0]
    levels = [np.zeros(1, dtype=np.int64)]  # sklearn node ids, level by level
    while True:
        parents = levels[-1][children_left[levels[-1]] >= 0]
        if parents.size == 0:
            break
        levels.append(np.column_stack([children_left[parents], children_right[parents]]).ravel())
    order = np.concatenate(levels)  # new position -> sklearn node id
    new_of_old = np.empty(n, dtype=np.int64)
    new_of_old[order] = np.arange(n)

    is_leaf = children_left[order] < 0
    left = np.where(is_leaf, np.arange(n), new_of_old[np.maximum(children_left[order], 0)])
    feature = np.where(is_leaf, 0, tree.feature[order])
    threshold = float32_at_or_below(tree.threshold[order].astype(np.float64))
    threshold[is_leaf] = np.inf
    value = np.ascontiguousarray(tree.value[order, 0, 0], dtype=np.float64)
    return feature, threshold, left, value
