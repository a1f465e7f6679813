"""One process of a concurrent start-up on a shared numba cache (``NUMBA_CACHE_DIR``), and
`start_together`, which starts several.

Usage: ``python kernel_cache_child.py``. The process imports tpgrid and fits a small forest,
prints ``ready``, waits for a line on stdin (so that all processes of a round warm up at
once), then runs `tpgrid.core.forest.warm_up_kernels`, predicts with both kernels and prints one
JSON line: whether the results equal scikit-learn's, and numba's cache hits and misses.

For `tests.kernel_cache_race`, two environment variables change what it does:

- ``KERNEL_CACHE_CHILD_READONLY=1``: no explicit warm-up, and a read-only ``X`` (another
  argument type, so another index key, until tpgrid copied such an ``X``);
- ``KERNEL_CACHE_CHILD_WIDEN=<seconds>``: numba sleeps a random time up to that before it
  writes an index or data file, widening the window between reading an index and writing it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from tpgrid.core import _kernels
from tpgrid.core.forest import pack_forest, warm_up_kernels

KERNELS = {
    "forest_mean_variance": _kernels.forest_mean_variance,
    "forest_tree_predictions": _kernels.forest_tree_predictions,
}


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4)).astype(np.float32)
    y = X[:, 0] * 2.0 + np.sin(X[:, 1]) + rng.normal(scale=0.1, size=400)
    estimator = RandomForestRegressor(n_estimators=12, random_state=0).fit(X, y)
    forest = pack_forest(estimator)
    readonly = os.environ.get("KERNEL_CACHE_CHILD_READONLY") == "1"
    widen = float(os.environ.get("KERNEL_CACHE_CHILD_WIDEN", "0"))
    if widen:
        _widen_index_race(widen)
    print("ready", flush=True)
    sys.stdin.readline()

    if readonly:
        X.setflags(write=False)
    else:
        warm_up_kernels()
    mean, variance = forest.predict_mean_variance(X)
    trees = forest.predict_trees(X)
    per_tree = np.stack([tree.predict(X) for tree in estimator.estimators_], axis=1)
    result: dict[str, Any] = {
        "mean_equal": bool(np.allclose(mean, estimator.predict(X), rtol=1e-12, atol=1e-12)),
        "variance_equal": bool(np.allclose(variance, per_tree.var(axis=1), rtol=1e-6)),
        "trees_equal": bool(np.array_equal(trees, per_tree)),
    }
    for name, kernel in KERNELS.items():
        stats = kernel.stats
        result[name] = {
            "hits": sum(stats.cache_hits.values()),
            "misses": sum(stats.cache_misses.values()),
        }
    print(json.dumps(result), flush=True)


def start_together(
    cache_dir: Path, envs: Sequence[Mapping[str, str]]
) -> list[tuple[int, dict[str, Any] | None, str]]:
    """Start one child per entry of ``envs`` (extra environment variables) on ``cache_dir``,
    let them all warm up at once when every one is ready, and return each one's exit code,
    JSON result (None if it printed none) and stderr."""
    children = [
        subprocess.Popen(
            [sys.executable, __file__],
            env={**os.environ, **env, "NUMBA_CACHE_DIR": str(cache_dir)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in envs
    ]
    for child in children:  # all imported and fitted...
        assert child.stdout is not None
        child.stdout.readline()
    for child in children:  # ...then all go
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    outcomes = []
    for child in children:
        out, err = child.communicate()
        lines = out.strip().splitlines()
        result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        outcomes.append((child.returncode, result, err))
    return outcomes


def _widen_index_race(seconds: float) -> None:
    """numba saves an entry by reading the index, writing it back, then writing the data file:
    sleep a random time up to ``seconds`` before each write."""
    from numba.core.caching import IndexDataCacheFile

    def slowed(write: Any) -> Any:
        def slow_write(self: Any, *args: Any) -> Any:
            time.sleep(random.uniform(0.0, seconds))
            return write(self, *args)

        return slow_write

    IndexDataCacheFile._save_index = slowed(IndexDataCacheFile._save_index)
    IndexDataCacheFile._save_data = slowed(IndexDataCacheFile._save_data)


if __name__ == "__main__":
    main()
