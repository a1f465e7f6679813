"""numba's on-disk kernel cache when worker processes start at once (docs/kernel-cache.md)."""

from __future__ import annotations

import errno
import pickle
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pytest

from tests.kernel_cache_child import KERNELS, start_together
from tpgrid import lock
from tpgrid.core import _kernels
from tpgrid.core.forest import PackedForest, warm_up_kernels
from tpgrid.lock import LOCK_NAME

#: Every kernel numba compiles for a prediction: the two called, and the ones they call.
CACHED = {"tile_rows", "_walk_packets", "_walk_lockstep", *KERNELS}


def index_entries(index: Path) -> tuple[str, dict[Any, str]]:
    """numba's version and the entries (key -> data file) of a cache index."""
    with index.open("rb") as f:
        version = pickle.load(f)
        _stamp, overloads = pickle.loads(f.read())
    return version, overloads


def kernel_name(path: Path) -> str:
    """``_kernels.forest_mean_variance-223.py311.1.nbc`` -> ``forest_mean_variance``."""
    return path.name.split("-")[0].removeprefix("_kernels.")


@pytest.mark.slow
def test_workers_starting_at_once_compile_once_and_leave_one_consistent_cache(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "numba"
    outcomes = start_together(cache, [{}] * 4)

    for code, result, err in outcomes:
        assert code == 0, err
        assert result is not None
        assert result["mean_equal"]
        assert result["variance_equal"]
        assert result["trees_equal"]
    for name in KERNELS:  # one process compiled each kernel, the others waited and loaded it
        assert sum(result[name]["misses"] for _, result, _ in outcomes if result) == 1
        assert sum(result[name]["hits"] for _, result, _ in outcomes if result) == 3

    (directory,) = cache.iterdir()  # the directory numba keeps tpgrid/core/_kernels.py's files in
    files = [path for path in directory.iterdir() if path.name != LOCK_NAME]
    assert not [path for path in files if ".tmp." in path.name]  # no write left half-done
    indexes = sorted(path for path in files if path.suffix == ".nbi")
    data = sorted(path for path in files if path.suffix == ".nbc")
    assert sorted(map(kernel_name, indexes)) == sorted(CACHED)
    assert sorted(map(kernel_name, data)) == sorted(CACHED)
    for index in indexes:
        version, overloads = index_entries(index)
        assert version == numba.__version__
        ((key, data_name),) = overloads.items()  # one signature on one machine: one entry
        assert data_name == index.name.removesuffix(".nbi") + ".1.nbc"
        payload = pickle.loads((directory / data_name).read_bytes())
        assert payload[3].args == key[0]  # the data file holds what the entry is keyed on

    ((code, result, err),) = start_together(cache, [{}])  # a worker joining later
    assert code == 0, err
    assert result is not None
    assert result["mean_equal"]
    assert result["trees_equal"]
    for name in KERNELS:
        assert result[name] == {"hits": 1, "misses": 0}


def test_read_only_input_is_not_another_signature() -> None:
    forest = PackedForest(
        feature=np.zeros(3, dtype=np.int16),
        threshold=np.array([0.5, np.inf, np.inf], dtype=np.float32),
        left=np.array([1, 1, 2], dtype=np.int32),
        value=np.array([0.0, -1.0, 1.0]),
        roots=np.zeros(1, dtype=np.int32),
        n_features=1,
    )
    X = np.array([[0.0], [1.0]], dtype=np.float32)
    forest.predict_mean_variance(X)
    forest.predict_trees(X)
    before = {name: list(kernel.signatures) for name, kernel in KERNELS.items()}
    X.setflags(write=False)

    mean, _ = forest.predict_mean_variance(X)
    trees = forest.predict_trees(X)

    assert mean.tolist() == [-1.0, 1.0]
    assert trees.tolist() == [[-1.0], [1.0]]
    assert {name: list(kernel.signatures) for name, kernel in KERNELS.items()} == before


def test_warm_up_goes_on_where_the_filesystem_has_no_locks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def no_locks(fd: int, operation: int) -> None:
        calls.append(operation)
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    warm_up_kernels.cache_clear()
    warm_up_kernels()

    assert calls  # it tried
    assert _kernels.forest_mean_variance.signatures
    assert _kernels.forest_tree_predictions.signatures
