"""How often each tree of a fitted scikit-learn forest drew each training row (its in-bag
counts): what the quantile forest weights leaves by (:mod:`tpgrid.core.quantiles`) and the
infinitesimal jackknife co-varies with the trees' predictions (:mod:`tpgrid.core.jackknife`).

scikit-learn does not keep the draws; they are replayed from the random state it gave each
tree, with its own (private) sampling functions, as quantile-forest and forestci do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def inbag_counts(estimator: Any, n_samples: int) -> npt.NDArray[np.int32]:
    """int32 (n_samples, n_trees): how often tree b's bootstrap drew training row i; all ones
    for a forest fitted without bootstrap (every tree saw every row once).

    Raises ValueError for a forest fitted with ``sample_weight``: scikit-learn draws by weight
    then and does not keep the weights, so the draws cannot be replayed.
    """
    from sklearn.ensemble._forest import _generate_sample_indices, _get_n_samples_bootstrap

    trees = estimator.estimators_
    if not estimator.bootstrap:
        return np.ones((n_samples, len(trees)), dtype=np.int32)
    if getattr(estimator, "sample_weight_", None) is not None:
        raise ValueError("forests fitted with sample_weight are not supported")
    n_drawn = _get_n_samples_bootstrap(n_samples, estimator.max_samples, None)
    counts = np.empty((n_samples, len(trees)), dtype=np.int32)
    for b, tree in enumerate(trees):
        drawn = _generate_sample_indices(tree.random_state, n_samples, n_drawn, None)
        counts[:, b] = np.bincount(drawn, minlength=n_samples)
    return counts
