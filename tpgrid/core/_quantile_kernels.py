"""Numba kernels for quantile regression forests (layouts: `tpgrid.core.quantiles`).

`forest_leaves` walks rows to their leaf in every tree (once, for the training rows);
`forest_quantiles` walks tiles of rows with `forest_mean_variance`'s walks, turns each row's
leaves into weights on the training samples and reads quantiles off their weighted
distribution, with the arithmetic of quantile-forest's ``calc_weighted_quantile`` step for step
(so the numbers are the same, not just close)."""

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from tpgrid.core._kernels import LANES, _u, _walk_tree, tile_rows

#: Bytes of the per-tile buffer of every tree's leaf per row (int64): it bounds the tile's rows
#: (1,024 rows for 500 trees), so the buffer stays in L2/L3 between the walk and the gathering.
LEAF_BUFFER_BYTES = 4 << 20


@numba.njit(nogil=True, cache=True)
def forest_leaves(X, feature, threshold, left, roots):  # type: ignore[no-untyped-def]
    """Packed node index of each row's leaf in each tree: int32 (n, n_trees); NaN rows → -1."""
    n = X.shape[0]
    n_trees = roots.shape[0]
    out = np.empty((n, n_trees), dtype=np.int32)
    for i in range(n):
        if np.isnan(X[i]).any():
            out[i, :] = -1
            continue
        for t in range(n_trees):
            k = roots[t]
            while left[k] != k:
                k = left[k] + (X[i, feature[k]] > threshold[k])
            out[i, t] = k
    return out


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _weighted_quantiles(y, rank, weight, cum, m, quantiles, order, out, i):  # type: ignore[no-untyped-def]
    """Quantiles of the distribution with ``weight[j]`` at ``y[rank[j]]``, j < m, into out[i].

    ``rank`` is ascending and starts at 0 (the smallest training target, with weight 0 if no leaf
    holds it: quantile-forest interpolates from it there, so it must be present). ``quantiles``
    are visited in ascending ``order`` and the floor index carries over between them, as in
    quantile-forest's ``calc_weighted_quantile`` (C = 1, "linear"), whose steps this follows.
    """
    cum[0] = weight[0]
    for j in range(1, m):
        cum[j] = cum[j - 1] + weight[j]
    f = cum[m - 1] + 1.0 - 2.0  # total + 1 - 2C, rounded as quantile-forest rounds it
    floor = 0
    ceil = 1
    for qi in range(order.shape[0]):
        q = quantiles[order[qi]]
        p = q * f + 1.0
        for j in range(floor, m):
            if p >= cum[j]:
                if weight[j] > 0:
                    floor = j
                    ceil = j + 1
            else:
                break
        if ceil > m - 1:
            ceil = m - 1
        while weight[ceil] == 0:
            ceil += 1
            if ceil > m - 1:
                ceil = floor
                break
        if floor >= m - 1:
            value = y[rank[m - 1]]
        elif ceil <= 0:
            value = y[rank[0]]
        elif floor == ceil:
            value = y[rank[floor]]
        else:
            v_floor = y[rank[floor]]
            v_ceil = y[rank[ceil]]
            if v_floor == v_ceil:
                value = v_floor
            else:
                p_floor = min(q, (cum[floor] - 1.0) / f)
                p_ceil = max(q, (cum[ceil] - 1.0) / f)
                p_ceil = p_floor + (p_ceil - p_floor) / weight[ceil]
                if q >= p_ceil:
                    value = v_ceil
                else:
                    frac = (q - p_floor) / (p_ceil - p_floor)
                    if frac <= 0:
                        value = v_floor
                    elif frac >= 1:
                        value = v_ceil
                    else:
                        value = v_floor + frac * (v_ceil - v_floor)
        out[i, order[qi]] = value


@numba.njit(nogil=True, cache=True, error_model="numpy")
def forest_quantiles(  # type: ignore[no-untyped-def]
    X, feature, threshold, left, roots, lockstep_levels, child_feature, leaf_code, entries, y,
    quantiles, order, weighted_leaves, walk,
):  # fmt: skip
    """Weighted quantiles of the training targets per row of float32 ``X``: (n, n_quantiles).

    Leaf k's header is ``entries[h]``, ``h = leaf_code[k]``: ``draws << 32 | n_samples``, then
    ``n_samples`` entries ``count << 32 | sample`` (in-bag count, position in the ascending
    ``y``). In tree t a row's leaf of n_t draws gives each of its draws the weight
    ``1 / n_t * S / T`` (``weighted_leaves``: S is the sum of the row's n_t over the T trees) or
    1 (not); a sample's weight is the sum over its draws, added one draw at a time in tree order
    as quantile-forest does, so the sums are equal bit for bit. ``order`` sorts ``quantiles``.
    NaN rows give NaN.

    Rows are walked a tile at a time, one tree after the other, by `forest_mean_variance`'s walks
    (``walk`` as there) with ``leaf_code`` as the leaf values, so each tree is read once per
    tile; then each row's weights are gathered from its leaves' entries.
    """
    n, n_features = X.shape
    n_trees = roots.shape[0]
    n_train = y.shape[0]
    out = np.empty((n, quantiles.shape[0]), dtype=np.float64)
    # The tile's leaves of every tree (int64) take at most LEAF_BUFFER_BYTES.
    rows_per_tile = max(1, LEAF_BUFFER_BYTES // (8 * n_trees) // LANES) * LANES
    rows_per_tile = min(rows_per_tile, tile_rows(n_features))
    rows_per_tile = min(rows_per_tile, max(1, (n + LANES - 1) // LANES) * LANES)
    stride = _u(rows_per_tile)
    tile = np.empty(rows_per_tile * n_features, dtype=np.float32)  # feature-major
    rows = np.empty(rows_per_tile, dtype=np.int64)  # tile row -> row of X
    leaf_id = np.empty(rows_per_tile, dtype=np.float64)  # one tree's leaf per tile row
    leaves = np.empty(rows_per_tile * n_trees, dtype=np.int64)  # row-major: a row's headers
    node = np.empty(rows_per_tile, dtype=np.uint32)
    active = np.empty(rows_per_tile, dtype=np.uint32)
    stack_node = np.empty(LANES, dtype=np.uint64)
    stack_mask = np.empty(LANES, dtype=np.uint64)
    spent = np.empty(2, dtype=np.uint64)
    total = np.zeros(n_train, dtype=np.float64)  # weight per sample; zero again after each row
    # Bit r set: sample r has weight (or r = 0). Read word by word, the set bits give the
    # weighted samples in ascending order without sorting them or sweeping all of ``total``.
    held = np.zeros((n_train + 63) // 64, dtype=np.uint64)
    rank = np.empty(n_train + 1, dtype=np.int64)
    weight = np.empty(n_train + 1, dtype=np.float64)
    cum = np.empty(n_train + 1, dtype=np.float64)
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
        spent[:] = 0  # cycles of the timed trees: packets, lockstep
        for t in range(n_trees):
            _walk_tree(
                t, walk, spent, tile, stride, m, roots, lockstep_levels, feature, threshold, left,
                child_feature, leaf_code, leaf_id, node, active, stack_node, stack_mask,
            )  # fmt: skip
            for j in range(m):
                leaves[j * n_trees + t] = np.int64(leaf_id[j])
        for j in range(m):
            row_leaves = leaves[j * n_trees : (j + 1) * n_trees]
            s = 0
            for t in range(n_trees):
                s += entries[row_leaves[t]] >> 32
            held[0] = _u(1)  # the smallest target always comes first
            for t in range(n_trees):
                h = row_leaves[t]
                w = 1.0
                if weighted_leaves:
                    w = 1.0 / (entries[h] >> 32)
                    w *= s
                    w /= n_trees
                for e in range(h + 1, h + 1 + (entries[h] & 0xFFFFFFFF)):
                    sample = entries[e] & 0xFFFFFFFF
                    held[sample >> 6] |= _u(1) << _u(sample & 63)
                    for _ in range(entries[e] >> 32):
                        total[sample] += w
            size = _compact(total, held, rank, weight)
            _weighted_quantiles(y, rank, weight, cum, size, quantiles, order, out, rows[j])
    return out


@numba.njit(nogil=True, cache=True)
def _compact(total, held, rank, weight):  # type: ignore[no-untyped-def]
    """The samples whose bit is set in ``held``, ascending, into rank/weight; clears their bits
    and ``total``. Returns how many."""
    size = 0
    for word_index in range(held.shape[0]):
        word = held[word_index]
        held[word_index] = _u(0)
        while word != _u(0):
            r = word_index * 64 + trailing_zeros(word)  # type: ignore[call-arg]
            rank[size] = r
            weight[size] = total[r]
            total[r] = 0.0
            size += 1
            word &= word - _u(1)
    return size
