"""Standard error of a bagged forest's mean by the infinitesimal jackknife (Wager, Hastie &
Efron 2014), as forestci computes it with ``calibrate=False``.

A forest's mean at x is an average over bootstrap samples of the training rows. How much it
would move under a new training sample is estimated from how each tree's prediction t_b(x)
co-varies with how often tree b drew training row i (its in-bag count N_bi):

    V_IJ(x)   = Σ_i Cov_b(N_bi, t_b(x))²
    V_IJ-U(x) = V_IJ(x) − n · v̄_N · Var_b(t_b(x)) / B

with covariances and variances over the B trees (divided by B), n training rows and v̄_N the
mean over rows of Var_b(N_bi) (≈ 1 for a bootstrap of n draws). The second term removes the
Monte Carlo bias a finite forest adds to V_IJ; it can make V_IJ-U negative for a small B.
When every count is 0 or 1 (subsampling without replacement) both are multiplied by
1 / (1 − mean N)², forestci's correction for that case.
"""

from __future__ import annotations

import numpy as np

from tpgrid.core.arrays import F64, FloatArray
from tpgrid.errors import AnalysisError

#: Largest (training rows or trees × map rows) product :func:`ij_variance` holds at once.
BLOCK_BYTES = 64 * 2**20


def ij_variance(
    tree_predictions: FloatArray,
    inbag: FloatArray,
    *,
    bias_corrected: bool = True,
    block_bytes: int = BLOCK_BYTES,
) -> F64:
    """Infinitesimal-jackknife variance of the forest mean per row: float64 (n_rows,).

    ``tree_predictions`` (n_rows, B) holds every tree's prediction per row (NaN rows give
    NaN); ``inbag`` (n_samples, B) the trees' in-bag counts of the training rows
    (:func:`tpgrid.core.bootstrap.inbag_counts`, or a site bootstrap's own counts; counts
    that do not vary between trees are an AnalysisError). ``bias_corrected`` returns V_IJ-U,
    else V_IJ (module docstring). It is one matrix product per block of rows: centred counts
    (n_samples × B), or with more training rows than trees their B × B Gram matrix, times
    centred predictions (B × rows), in blocks of at most ``block_bytes`` of product; the block
    size changes the result by rounding only."""
    t = np.asarray(tree_predictions, dtype=np.float64)
    counts = np.asarray(inbag, dtype=np.float64)
    if t.ndim != 2 or counts.ndim != 2 or t.shape[1] != counts.shape[1] or counts.size == 0:
        raise AnalysisError(
            f"tree predictions {t.shape} and in-bag counts {counts.shape} must be "
            "(rows, trees) and (training rows, trees) with the same trees, at least one of each"
        )
    n_samples, n_trees = counts.shape
    # Centring the counts makes the product with centred predictions a covariance.
    counts_c = counts - counts.mean(axis=1, keepdims=True)
    count_var = float(np.mean(counts_c * counts_c))
    if count_var == 0:
        raise AnalysisError(
            "the in-bag counts do not vary between trees: the jackknife needs a forest "
            "fitted with bootstrap=True"
        )
    # Σ_i (N_c t_c)_i² = t_cᵀ (N_cᵀ N_c) t_c: with more training rows than trees, the trees'
    # B × B Gram matrix makes each row cost B² instead of n · B, the same sum in another order.
    gram = n_samples > n_trees
    factor = counts_c.T @ counts_c if gram else counts_c
    if gram and bias_corrected:
        factor[np.diag_indices(n_trees)] -= n_samples * count_var
    rows_per_block = max(1, block_bytes // (8 * factor.shape[0]))
    variance = np.empty(t.shape[0], dtype=np.float64)
    for start in range(0, t.shape[0], rows_per_block):
        block = t[start : start + rows_per_block]
        t_c = block - block.mean(axis=1, keepdims=True)
        product = factor @ t_c.T  # (n_samples or B, rows in block)
        if gram:
            v = np.einsum("br,rb->r", product, t_c)
        else:
            v = np.einsum("ir,ir->r", product, product)
            if bias_corrected:
                v -= n_samples * count_var * np.einsum("rb,rb->r", t_c, t_c)
        variance[start : start + rows_per_block] = v / n_trees**2
    if counts.max() == 1:
        variance /= (1.0 - counts.mean()) ** 2
    return variance
