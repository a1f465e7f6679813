"""Numba kernels that walk a packed forest (layout: `tpgrid.forest.PackedForest`).

Loop order of `forest_mean_variance`: rows are copied, NaN-free ones only, into a tile of
`TILE_VALUES` covariate values (row-major float32, 256 KiB: it stays in L2); the tile is walked
through one tree at a time, so each tree (~20 KB) is read from L3 once per tile. Within a tree
the tile moves one level at a time: one pass over the rows makes one branch-free step
``k = left[k] + (x[feature[k]] > threshold[k])`` for every row. The rows of a pass are
independent, so the CPU overlaps their loads. The first ``lockstep_levels[t]`` levels are
stepped for all rows without looking for leaves (a leaf points to itself and has a +inf
threshold, so extra steps stay put); after that, each pass keeps a list of the rows not yet at a
leaf and compacts it branch-free. Indices are unsigned: numba then skips negative-index checks.

Measured on the PERF.md reference forest (500 trees, 1.01 M nodes, 13.6 node visits per
pixel·tree), 20,000 random rows, one thread, CPU time, ns per pixel·tree (lower is better):

- PERF.md's best so far (2,048 rows per tree pass, 8-16 rows in lockstep): 39-40 on 2 threads
- this loop order, signed indices, 2-D tile, leaf check every level: 60
- + the first min-leaf-depth levels without leaf checks: 52
- + unsigned indices and a flat tile (no wraparound code: 17 instructions per step): 27
- + 8 more levels without leaf checks: 21; tiles of 1,024 → 3,640 rows: 18.6-19 (this design)
- tried, not kept: feature-major tile (same speed); depth-first node order (+10 %); 2 or 3
  steps per leaf check (+10-25 %); groups of 8-16 rows in lockstep, exit check every 1-2
  levels (27-42); all levels of one row before the next (37: one chain of dependent loads);
  tiles of 256-512 rows (+20-60 %); one 64-bit node record (feature | child offset |
  order-preserving threshold key) instead of three arrays (8 % faster, harder to read).
Spatially coherent rows run at the same speed: the walk has no data-dependent branches.
"""

import numba
import numpy as np

#: Covariate values per tile (256 KiB of float32, 3,640 rows of 18 features): the tile and its
#: per-row state stay in a 1 MiB L2; each tree is read from L3 once per tile.
TILE_VALUES = 65_536

_u = np.uint64  # index type: unsigned indices compile without wraparound checks


@numba.njit(nogil=True, cache=True)
def forest_mean_variance(X, feature, threshold, left, value, roots, lockstep_levels):  # type: ignore[no-untyped-def]
    """Per row of float32 ``X`` (n, n_features): mean and population variance over trees.

    ``lockstep_levels[t]`` levels of tree ``t`` are walked without checking for leaves; any
    value gives the same result, only the speed changes. Rows with a NaN covariate get NaN
    for both outputs and are not walked. Returns two float64 arrays of length n.
    """
    n, n_features = X.shape
    n_trees = roots.shape[0]
    mean = np.empty(n, dtype=np.float64)
    variance = np.empty(n, dtype=np.float64)
    # Sums of (value - ref) and its square, shifted by the first root's value for stability.
    ref = value[roots[0]]
    stride = _u(n_features)
    tile_rows = max(1, TILE_VALUES // max(n_features, 1))
    tile = np.empty(tile_rows * n_features, dtype=np.float32)
    rows = np.empty(tile_rows, dtype=np.int64)  # tile row -> row of X
    node = np.empty(tile_rows, dtype=np.uint32)  # current node of each tile row
    active = np.empty(tile_rows, dtype=np.uint32)  # tile rows not yet at a leaf
    s1 = np.empty(tile_rows, dtype=np.float64)
    s2 = np.empty(tile_rows, dtype=np.float64)
    for start in range(0, n, tile_rows):
        m = 0
        for i in range(start, min(start + tile_rows, n)):
            if np.isnan(X[i]).any():
                mean[i] = np.nan
                variance[i] = np.nan
            else:
                tile[m * n_features : (m + 1) * n_features] = X[i]
                rows[m] = i
                m += 1
        s1[:m] = 0.0
        s2[:m] = 0.0
        for t in range(n_trees):
            node[:m] = roots[t]
            for _ in range(lockstep_levels[t]):
                for j in range(_u(m)):
                    k = _u(node[j])
                    x = tile[j * stride + _u(feature[k])]
                    node[j] = _u(left[k]) + _u(x > threshold[k])
            n_active = _u(0)
            for j in range(_u(m)):
                active[n_active] = j
                n_active += _u(_u(left[_u(node[j])]) != _u(node[j]))
            while n_active > 0:
                still = _u(0)
                for a in range(n_active):
                    row = _u(active[a])
                    k = _u(node[row])
                    x = tile[row * stride + _u(feature[k])]
                    k = _u(left[k]) + _u(x > threshold[k])
                    node[row] = k
                    active[still] = row
                    still += _u(_u(left[k]) != k)
                n_active = still
            for j in range(m):
                v = value[node[j]] - ref
                s1[j] += v
                s2[j] += v * v
        for j in range(m):
            d = s1[j] / n_trees
            mean[rows[j]] = ref + d
            variance[rows[j]] = max(s2[j] / n_trees - d * d, 0.0)
    return mean, variance


@numba.njit(nogil=True, cache=True)
def forest_tree_predictions(X, feature, threshold, left, value, roots):  # type: ignore[no-untyped-def]
    """Every tree's prediction per row of float32 ``X``: float64 (n, n_trees); NaN rows → NaN."""
    n = X.shape[0]
    n_trees = roots.shape[0]
    out = np.empty((n, n_trees), dtype=np.float64)
    for i in range(n):
        if np.isnan(X[i]).any():
            out[i, :] = np.nan
            continue
        for t in range(n_trees):
            k = roots[t]
            while left[k] != k:
                k = left[k] + (X[i, feature[k]] > threshold[k])
            out[i, t] = value[k]
    return out
