"""Numba kernels that walk a packed forest (layout: `tpgrid.core.forest.PackedForest`).

`forest_mean_variance` copies the NaN-free rows, in their order, into a feature-major tile of
`TILE_VALUES` covariate values and walks the tile through one tree at a time, so each tree is
read from memory once per tile. A tree is walked one of two ways, which reach the same leaves:
**packets** send `LANES` neighbouring rows down together (one vector compare per node gives the
mask of rows going right), cheap when rows share their path as a raster chunk's pixels do;
**lockstep** steps every row one level per pass, branch-free, so the CPU overlaps the loads of
independent rows, which is faster when rows do not share paths. Which wins depends on the rows,
the forest and the CPU, so each tile times both on its first trees and walks the rest the faster
way. docs/performance.md says what this relies on; docs/benchmarks.md has the measurements and
what was tried.
"""

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

#: Covariate values per tile (1 MiB of float32: 9,344 rows of 28 columns): the tile stays in
#: L2/L3 while every tree walks it, and each tree is read from cache once per tile.
TILE_VALUES = 262_144
#: Rows walked together by one packet: one bit each in a 64-bit mask.
LANES = 64
#: Trees per walk timed at the start of each tile before choosing the faster walk.
PROBE_TREES = 4
#: Values of ``walk`` in `forest_mean_variance`: choose by timing, or force one walk.
AUTO, PACKETS, LOCKSTEP = 0, 1, 2

_u = np.uint64  # index type: unsigned indices compile without wraparound checks


@numba.njit(cache=True)
def tile_rows(n_features):  # type: ignore[no-untyped-def]
    """Rows per tile for ``n_features`` covariates: a multiple of `LANES`."""
    return max(1, TILE_VALUES // max(n_features, 1) // LANES) * LANES


# --- vector helpers written in LLVM IR -------------------------------------------------------
# numba does not emit these from plain loops: its SLP vectoriser is off, and loops of a fixed
# count are unrolled before the loop vectoriser runs.


def _broadcast(builder: Any, value: Any, n: int) -> Any:
    """An n-lane vector with ``value`` in every lane."""
    vector = ir.VectorType(value.type, n)
    first = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.IntType(32)(0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n)
    return builder.shuffle_vector(first, ir.Constant(vector, ir.Undefined), zeros)


@intrinsic
def _lanes_greater(typingctx: Any, values: Any, start: Any, threshold: Any) -> Any:
    """uint64 mask with bit j set iff ``values[start + j] > threshold``, j < LANES: one vector
    compare (4 AVX-512 instructions) instead of 64 scalar ones."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array, first, limit = args
        data = context.make_array(signature.args[0])(context, builder, array).data
        vector = ir.VectorType(ir.FloatType(), LANES)
        pointer = builder.bitcast(builder.gep(data, [first]), vector.as_pointer())
        above = builder.fcmp_ordered(
            ">", builder.load(pointer, align=4), _broadcast(builder, limit, LANES)
        )
        return builder.bitcast(above, ir.IntType(LANES))

    return types.uint64(values, start, threshold), codegen


@intrinsic
def _fill_lanes(typingctx: Any, out: Any, start: Any, mask: Any, value: Any) -> Any:
    """``out[start + j] = value`` for every bit j set in ``mask`` (one masked vector store)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array, first, lanes, fill = args
        data = context.make_array(signature.args[0])(context, builder, array).data
        vector = ir.VectorType(ir.DoubleType(), LANES)
        pointer = builder.bitcast(builder.gep(data, [first]), vector.as_pointer())
        chosen = builder.bitcast(lanes, ir.VectorType(ir.IntType(1), LANES))
        old = builder.load(pointer, align=8)
        builder.store(
            builder.select(chosen, _broadcast(builder, fill, LANES), old), pointer, align=8
        )
        return context.get_dummy_value()

    return types.void(out, start, mask, value), codegen


@intrinsic
def _cycles(typingctx: Any) -> Any:
    """The CPU's cycle counter (rdtsc on x86): only differences are meaningful."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        counter = builder.module.declare_intrinsic(
            "llvm.readcyclecounter", fnty=ir.FunctionType(ir.IntType(64), [])
        )
        return builder.call(counter, [])

    return types.uint64(), codegen


# --- the two walks of one tree over a tile: each writes out[j] = value of row j's leaf ---


@numba.njit(nogil=True, cache=True)
def _walk_packets(  # type: ignore[no-untyped-def]
    tile, stride, m, root, feature, threshold, left, value, out, stack_node, stack_mask
):
    """Walk tile rows [0, m) through the tree at ``root``, `LANES` neighbouring rows at a time.

    ``mask`` holds the packet's rows still on node ``k``. The stack holds the parts that went
    right, to walk after the left part: their masks are disjoint and non-empty, so fewer than
    `LANES` entries are ever pending.
    """
    for r0 in range(_u(0), _u(m), _u(LANES)):
        lanes = min(_u(LANES), _u(m) - r0)
        mask = (_u(1) << lanes) - _u(1) if lanes < LANES else ~_u(0)
        k = _u(root)
        pending = 0
        while True:
            while _u(left[k]) != k:
                right = _lanes_greater(tile, _u(feature[k]) * stride + r0, threshold[k]) & mask  # type: ignore[call-arg]
                if right == 0:
                    k = _u(left[k])
                elif right == mask:
                    k = _u(left[k]) + _u(1)
                else:  # the packet parts: left now, right later
                    stack_node[pending] = _u(left[k]) + _u(1)
                    stack_mask[pending] = right
                    pending += 1
                    k = _u(left[k])
                    mask &= ~right
            _fill_lanes(out, r0, mask, value[k])  # type: ignore[call-arg]
            if pending == 0:
                break
            pending -= 1
            k = stack_node[pending]
            mask = stack_mask[pending]


@numba.njit(nogil=True, cache=True)
def _walk_lockstep(  # type: ignore[no-untyped-def]
    tile, stride, m, root, levels, child_feature, threshold, value, out, node, active
):
    """Walk tile rows [0, m) through the tree at ``root``, one level of every row per pass.
    ``child_feature[k]`` is node k's left child << 32 | its feature."""
    low = _u(0xFFFFFFFF)
    node[:m] = root
    for _ in range(levels):
        for j in range(_u(m)):
            k = _u(node[j])
            cf = child_feature[k]
            node[j] = (cf >> _u(32)) + _u(tile[(cf & low) * stride + j] > threshold[k])
    n_active = _u(0)
    for j in range(_u(m)):
        active[n_active] = j
        n_active += _u((child_feature[_u(node[j])] >> _u(32)) != _u(node[j]))
    while n_active > 0:
        still = _u(0)
        for a in range(n_active):
            row = _u(active[a])
            k = _u(node[row])
            cf = child_feature[k]
            k = (cf >> _u(32)) + _u(tile[(cf & low) * stride + row] > threshold[k])
            node[row] = k
            active[still] = row
            still += _u((child_feature[k] >> _u(32)) != k)
        n_active = still
    for j in range(m):
        out[j] = value[node[j]]


# Inlined into each kernel: as a call it cost the kernels 1-2 % on random rows.
@numba.njit(nogil=True, cache=True, inline="always")
def _walk_tree(  # type: ignore[no-untyped-def]
    t, walk, spent, tile, stride, m, roots, lockstep_levels, feature, threshold, left,
    child_feature, value, out, node, active, stack_node, stack_mask,
):  # fmt: skip
    """Walk tile rows [0, m) through tree ``t``, writing each row's leaf value to ``out``.

    With ``walk`` = `AUTO` the first ``2·PROBE_TREES`` trees of a tile alternate the walks and
    add their cycles to ``spent`` ([packets, lockstep], zeroed per tile); the rest take the one
    that spent fewer. `PACKETS` or `LOCKSTEP` force one walk."""
    if walk == AUTO and t < 2 * PROBE_TREES:
        packets = t % 2 == 0
    elif walk == AUTO:
        packets = bool(spent[0] <= spent[1])
    else:
        packets = walk == PACKETS
    start = _cycles()  # type: ignore[call-arg,var-annotated]
    if packets:
        _walk_packets(
            tile, stride, m, roots[t], feature, threshold, left, value, out, stack_node,
            stack_mask,
        )  # fmt: skip
    else:
        _walk_lockstep(
            tile, stride, m, roots[t], lockstep_levels[t], child_feature, threshold, value, out,
            node, active,
        )  # fmt: skip
    if t < 2 * PROBE_TREES:
        spent[0 if packets else 1] += _cycles() - start


@numba.njit(nogil=True, cache=True)
def forest_mean_variance(  # type: ignore[no-untyped-def]
    X, feature, threshold, left, value, roots, lockstep_levels, child_feature, walk=AUTO
):
    """Per row of float32 ``X`` (n, n_features): mean and population variance over trees.

    ``walk`` is `AUTO` (time both walks on each tile's first trees, keep the faster), `PACKETS`
    or `LOCKSTEP`; ``lockstep_levels[t]`` levels of tree ``t`` are walked in lockstep without
    checking for leaves. Neither changes the result, only the speed. Rows with a NaN covariate
    get NaN for both outputs and are not walked. Returns two float64 arrays of length n.
    """
    n, n_features = X.shape
    n_trees = roots.shape[0]
    mean = np.empty(n, dtype=np.float64)
    variance = np.empty(n, dtype=np.float64)
    # The mean sums value - ref, ref being the first root's value (as it always has). The
    # variance sums e = value - first and e², first being the row's own leaf value in tree 0:
    # where all trees agree every e is 0, so the variance is exactly 0.0; elsewhere e is exact
    # (Sterbenz) or rounded once relative to |e|, however large the offset, and as first is one
    # of the values, mean(e)² <= (n_trees - 1) variance bounds the cancellation below.
    ref = value[roots[0]]
    rows_per_tile = min(tile_rows(n_features), max(1, (n + LANES - 1) // LANES) * LANES)
    stride = _u(rows_per_tile)
    tile = np.empty(rows_per_tile * n_features, dtype=np.float32)  # feature-major
    rows = np.empty(rows_per_tile, dtype=np.int64)  # tile row -> row of X
    leaf_value = np.empty(rows_per_tile, dtype=np.float64)  # this tree's leaf value, per row
    first = np.empty(rows_per_tile, dtype=np.float64)  # tree 0's leaf value, per row
    s1 = np.empty(rows_per_tile, dtype=np.float64)  # sum of value - ref
    e1 = np.empty(rows_per_tile, dtype=np.float64)  # sum of e = value - first
    e2 = np.empty(rows_per_tile, dtype=np.float64)  # sum of e²
    node = np.empty(rows_per_tile, dtype=np.uint32)  # lockstep: current node of each row
    active = np.empty(rows_per_tile, dtype=np.uint32)  # lockstep: rows not yet at a leaf
    stack_node = np.empty(LANES, dtype=np.uint64)  # packets: parts waiting to be walked
    stack_mask = np.empty(LANES, dtype=np.uint64)
    spent = np.empty(2, dtype=np.uint64)
    i = 0
    while i < n:
        m = 0
        while i < n and m < rows_per_tile:
            if np.isnan(X[i]).any():
                mean[i] = np.nan
                variance[i] = np.nan
            else:
                for f in range(n_features):
                    tile[f * rows_per_tile + m] = X[i, f]
                rows[m] = i
                m += 1
            i += 1
        s1[:m] = 0.0
        e1[:m] = 0.0
        e2[:m] = 0.0
        spent[:] = 0  # cycles of the timed trees: packets, lockstep
        for t in range(n_trees):
            _walk_tree(
                t, walk, spent, tile, stride, m, roots, lockstep_levels, feature, threshold, left,
                child_feature, value, leaf_value, node, active, stack_node, stack_mask,
            )  # fmt: skip
            if t == 0:
                first[:m] = leaf_value[:m]
            for j in range(m):
                v = leaf_value[j]
                s1[j] += v - ref
                e = v - first[j]
                e1[j] += e
                e2[j] += e * e
        for j in range(m):
            mean[rows[j]] = ref + s1[j] / n_trees
            d = e1[j] / n_trees
            variance[rows[j]] = max(e2[j] / n_trees - d * d, 0.0)
    return mean, variance


@numba.njit(nogil=True, cache=True)
def forest_tree_predictions(  # type: ignore[no-untyped-def]
    X, feature, threshold, left, value, roots, lockstep_levels, child_feature, walk=AUTO
):
    """Every tree's prediction per row of float32 ``X``: float64 (n, n_trees); NaN rows → NaN.

    The rows are walked a tile at a time through one tree after the other, as in
    `forest_mean_variance` (each tree read once per tile, not once per row: 8-13x faster on
    the bench's forest, docs/performance.md); ``walk`` as there, never changing the result.
    """
    n, n_features = X.shape
    n_trees = roots.shape[0]
    out = np.empty((n, n_trees), dtype=np.float64)
    rows_per_tile = min(tile_rows(n_features), max(1, (n + LANES - 1) // LANES) * LANES)
    stride = _u(rows_per_tile)
    tile = np.empty(rows_per_tile * n_features, dtype=np.float32)  # feature-major
    rows = np.empty(rows_per_tile, dtype=np.int64)  # tile row -> row of X
    leaf_value = np.empty(rows_per_tile, dtype=np.float64)
    node = np.empty(rows_per_tile, dtype=np.uint32)
    active = np.empty(rows_per_tile, dtype=np.uint32)
    stack_node = np.empty(LANES, dtype=np.uint64)
    stack_mask = np.empty(LANES, dtype=np.uint64)
    spent = np.empty(2, dtype=np.uint64)
    i = 0
    while i < n:
        m = 0
        while i < n and m < rows_per_tile:
            if np.isnan(X[i]).any():
                out[i, :] = np.nan
            else:
                for f in range(n_features):
                    tile[f * rows_per_tile + m] = X[i, f]
                rows[m] = i
                m += 1
            i += 1
        spent[:] = 0
        for t in range(n_trees):
            _walk_tree(
                t, walk, spent, tile, stride, m, roots, lockstep_levels, feature, threshold, left,
                child_feature, value, leaf_value, node, active, stack_node, stack_mask,
            )  # fmt: skip
            for j in range(m):
                out[rows[j], t] = leaf_value[j]
    return out
