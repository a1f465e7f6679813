"""Numba kernels for quantile regression forests (layouts: `tpgrid.core.quantiles`).

`forest_leaves` walks rows to their leaf in every tree; `forest_quantiles` turns a row's leaves
into weights on the training samples and reads quantiles off their weighted distribution, with
the arithmetic of quantile-forest's ``calc_weighted_quantile`` step for step (so the numbers
are the same, not just close). Both walk one row at a time: a row's weights have to be gathered
over all trees before any quantile can be read, and that gathering, not the walk, is the cost.
"""

import numba
import numpy as np


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
def _weighted_quantiles(y, rank, weight, m, quantiles, order, out, i):  # type: ignore[no-untyped-def]
    """Quantiles of the distribution with ``weight[j]`` at ``y[rank[j]]``, j < m, into out[i].

    ``rank`` is ascending and starts at 0 (the smallest training target, with weight 0 if no leaf
    holds it: quantile-forest interpolates from it there, so it must be present). ``quantiles``
    are visited in ascending ``order`` and the floor index carries over between them, as in
    quantile-forest's ``calc_weighted_quantile`` (C = 1, "linear"), whose steps this follows.
    """
    cum = np.empty(m, dtype=np.float64)
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
    X, feature, threshold, left, roots, leaf_offsets, samples, counts, y, quantiles, order,
    weighted_leaves,
):  # fmt: skip
    """Weighted quantiles of the training targets per row of float32 ``X``: (n, n_quantiles).

    Leaf k holds entries ``leaf_offsets[k]:leaf_offsets[k + 1]`` of ``samples`` (positions in
    the ascending ``y``) and ``counts`` (in-bag counts). In tree t a row's leaf of in-bag size
    n_t gives each of its in-bag draws the weight ``1 / n_t * S / T`` (``weighted_leaves``: S is
    the sum of the row's n_t over the T trees) or 1 (not); a sample's weight is the sum over its
    draws, added one draw at a time in tree order as quantile-forest does, so the sums are equal
    bit for bit. ``order`` sorts ``quantiles``. NaN rows give NaN.
    """
    n = X.shape[0]
    n_trees = roots.shape[0]
    n_train = y.shape[0]
    out = np.empty((n, quantiles.shape[0]), dtype=np.float64)
    leaf = np.empty(n_trees, dtype=np.int64)
    size = np.empty(n_trees, dtype=np.int64)
    total = np.zeros(n_train, dtype=np.float64)  # weight per sample; zero again after each row
    touched = np.empty(n_train + 1, dtype=np.int64)
    weight = np.empty(n_train + 1, dtype=np.float64)
    for i in range(n):
        if np.isnan(X[i]).any():
            out[i, :] = np.nan
            continue
        s = 0
        for t in range(n_trees):
            k = roots[t]
            while left[k] != k:
                k = left[k] + (X[i, feature[k]] > threshold[k])
            leaf[t] = k
            size[t] = 0
            for e in range(leaf_offsets[k], leaf_offsets[k + 1]):
                size[t] += counts[e]
            s += size[t]
        m = 0
        for t in range(n_trees):
            w = 1.0
            if weighted_leaves:
                w = 1.0 / size[t]
                w *= s
                w /= n_trees
            k = leaf[t]
            for e in range(leaf_offsets[k], leaf_offsets[k + 1]):
                j = samples[e]
                if total[j] == 0.0:  # weights are > 0: first draw of this sample
                    touched[m] = j
                    m += 1
                for _ in range(counts[e]):
                    total[j] += w
        ranks = np.sort(touched[:m])
        # The smallest target always comes first (weight 0 if no leaf holds it).
        start = 0 if ranks[0] == 0 else 1
        touched[0] = 0
        weight[0] = 0.0
        for j in range(m):
            touched[start + j] = ranks[j]
            weight[start + j] = total[ranks[j]]
            total[ranks[j]] = 0.0
        _weighted_quantiles(y, touched, weight, m + start, quantiles, order, out, i)
    return out
