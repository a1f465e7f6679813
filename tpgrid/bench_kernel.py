"""Prediction-throughput benchmark of the packed-forest kernel against scikit-learn.

Run ``python -m tpgrid.bench_kernel --trees 500 --rows 100000 --seed 0``. It builds the
reference forest of ``shared/PERF.md``, checks that tpgrid and scikit-learn agree, then times
every engine on the same rows, for random rows (worst case) and spatially coherent rows (like
raster chunks). Figures are noisy: compare the ratios taken in one run.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tpgrid.forest import PackedForest, pack_forest

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def reference_target(X: F32) -> F64:
    """A nonlinear target on standard-normal covariates, so the trees grow deep and uneven."""
    x = X.astype(np.float64)
    y: F64 = (
        np.sin(2.0 * x[:, 0])
        + x[:, 1] * x[:, 2]
        + np.where(x[:, 3] > 0.3, 1.5, -0.5) * x[:, 4]
        + 0.5 * np.abs(x[:, 5] - x[:, 6])
        + 0.3 * x[:, 7:].sum(axis=1)
    )
    return y


def build_reference_forest(
    n_trees: int = 500, n_rows: int = 1600, n_features: int = 18, seed: int = 0, n_jobs: int = 2
) -> Any:
    """Fit PERF.md's reference ``RandomForestRegressor`` (max_features=1/3) on float32 rows."""
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, n_features)).astype(np.float32)
    y = reference_target(X) + 0.2 * rng.standard_normal(n_rows)
    forest = RandomForestRegressor(
        n_estimators=n_trees, max_features=1 / 3, random_state=seed, n_jobs=n_jobs
    )
    return forest.fit(X, y)


def random_rows(n_rows: int, n_features: int, seed: int) -> F32:
    """Independent standard-normal float32 rows: every pixel takes its own path (worst case)."""
    return np.random.default_rng(seed + 1).standard_normal((n_rows, n_features)).astype(np.float32)


def coherent_rows(n_rows: int, n_features: int, seed: int, wavelength_px: float = 64.0) -> F32:
    """Rows of a square raster, row-major, whose covariates are smooth standard-normal fields.

    Each field is white noise low-passed in Fourier space (features ~``wavelength_px`` pixels
    across), like a covariate cube chunk where neighbouring pixels mostly share a tree path.
    """
    rng = np.random.default_rng(seed + 2)
    side = int(np.ceil(np.sqrt(n_rows)))
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(side), np.fft.rfftfreq(side), indexing="ij"))
    low_pass = np.exp(-((freq * wavelength_px) ** 2))
    fields = np.empty((side * side, n_features), dtype=np.float32)
    for f in range(n_features):
        field = np.fft.irfft2(
            np.fft.rfft2(rng.standard_normal((side, side))) * low_pass, (side, side)
        )
        fields[:, f] = ((field - field.mean()) / field.std()).ravel()
    return np.ascontiguousarray(fields[:n_rows])


def mean_node_visits(estimator: Any, X: F32) -> float:
    """Average number of internal nodes a pixel passes per tree (= depth of the leaf reached)."""
    leaves = estimator.apply(X)  # (n, n_trees) sklearn node ids
    total = 0
    for t, tree in enumerate(estimator.estimators_):
        total += int(_node_depths(tree.tree_)[leaves[:, t]].sum())
    return total / int(leaves.size)


def _node_depths(tree: Any) -> npt.NDArray[np.int64]:
    depth = np.zeros(tree.node_count, dtype=np.int64)
    level = np.array([0])
    d = 0
    while level.size:
        depth[level] = d
        parents = level[tree.children_left[level] >= 0]
        level = np.concatenate([tree.children_left[parents], tree.children_right[parents]])
        d += 1
    return depth


def check_agreement(estimator: Any, packed: PackedForest, X: F32, n_check: int = 2000) -> None:
    """Raise AssertionError unless tpgrid matches scikit-learn on the first ``n_check`` rows.

    Per-tree predictions must be identical; the mean equal to ``predict`` within 1e-9 relative.
    """
    sample = X[:n_check]
    per_tree = packed.predict_trees(sample)
    for t, tree in enumerate(estimator.estimators_):
        if not np.array_equal(per_tree[:, t], tree.predict(sample)):
            raise AssertionError(f"tree {t}: tpgrid and scikit-learn predictions differ")
    mean, variance = packed.predict_mean_variance(sample)
    np.testing.assert_allclose(mean, estimator.predict(sample), rtol=1e-9, atol=0)
    np.testing.assert_allclose(variance, per_tree.var(axis=1), rtol=1e-9, atol=1e-12)


def sklearn_tree_loop(estimator: Any, X: F32) -> tuple[F64, F64]:
    """Mean and variance the way a scikit-learn user would: one ``predict`` per tree."""
    s1 = np.zeros(X.shape[0])
    s2 = np.zeros(X.shape[0])
    for tree in estimator.estimators_:
        p = tree.predict(X)
        s1 += p
        s2 += p * p
    n = len(estimator.estimators_)
    return s1 / n, s2 / n - (s1 / n) ** 2


def tpgrid_threaded(
    packed: PackedForest, X: F32, pool: ThreadPoolExecutor, threads: int
) -> tuple[F64, F64]:
    """Mean and variance with rows split evenly over ``threads`` pool threads (kernel is nogil)."""
    parts = np.array_split(X, threads)
    results = list(pool.map(packed.predict_mean_variance, parts))
    return (
        np.concatenate([r[0] for r in results]),
        np.concatenate([r[1] for r in results]),
    )


def best_times(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time in seconds of each run, after one warm-up call each.

    Runs take turns within each repeat, so a burst of other work on the machine hits them
    alike and the ratios of one call stay fair.
    """
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def time_engines(
    estimator: Any, packed: PackedForest, X: F32, repeats: int = 3, threads: int = 2
) -> dict[str, float]:
    """Best wall time in seconds of each engine on ``X``, keyed by engine name.

    Sets the estimator's ``n_jobs`` to ``threads``.
    """
    estimator.set_params(n_jobs=threads)
    with ThreadPoolExecutor(threads) as pool:
        return best_times(
            {
                f"scikit-learn predict, n_jobs={threads} (mean)": lambda: estimator.predict(X),
                "scikit-learn loop over estimators_ (mean+var)": lambda: sklearn_tree_loop(
                    estimator, X
                ),
                f"tpgrid, {threads} threads (mean+var)": lambda: tpgrid_threaded(
                    packed, X, pool, threads
                ),
                "tpgrid, 1 thread (mean+var)": lambda: packed.predict_mean_variance(X),
            },
            repeats,
        )


@dataclass(frozen=True)
class Report:
    """Timings of one row kind, with what is needed to turn them into per-visit figures."""

    rows: str
    n_pixels: int
    n_trees: int
    visits_per_pixel_tree: float
    seconds: dict[str, float]

    def lines(self) -> list[str]:
        """The report as printable lines: one per engine, then tpgrid's speed-up over peers."""
        pixel_trees = self.n_pixels * self.n_trees
        out = [
            f"{self.rows} rows: {self.n_pixels:,} pixels x {self.n_trees} trees, "
            f"{self.visits_per_pixel_tree:.2f} node visits per pixel·tree",
            f"  {'engine':<48} {'ns/(px·tree)':>12} {'Mpx·tree/s':>11} {'ns/visit':>9}",
        ]
        for name, seconds in self.seconds.items():
            ns = seconds * 1e9 / pixel_trees
            out.append(
                f"  {name:<48} {ns:>12.2f} {pixel_trees / seconds / 1e6:>11.1f} "
                f"{ns / self.visits_per_pixel_tree:>9.3f}"
            )
        ours = {k: v for k, v in self.seconds.items() if k.startswith("tpgrid")}
        peers = {k: v for k, v in self.seconds.items() if not k.startswith("tpgrid")}
        for name, seconds in ours.items():
            ratios = ", ".join(
                f"{p / seconds:.2f}x vs {k.split(' (')[0]}" for k, p in peers.items()
            )
            out.append(f"  speed-up of {name.split(' (')[0]}: {ratios}")
        return out


def run(n_trees: int, n_rows: int, seed: int, repeats: int) -> list[Report]:
    """Build, check and time everything; return one report per row kind."""
    print(
        f"load average before the run: {os.getloadavg()[0]:.2f} "
        f"(on {os.cpu_count()} CPUs; other work skews the 2-thread figures)"
    )
    estimator = build_reference_forest(n_trees=n_trees, seed=seed)
    packed = pack_forest(estimator)
    n_features = packed.n_features
    print(
        f"forest: {packed.n_trees} trees, {packed.n_nodes:,} nodes, "
        f"{packed.nbytes / 2**20:.1f} MiB packed, "
        f"max depth {max(t.get_depth() for t in estimator.estimators_)}"
    )
    reports = []
    for kind, X in (
        ("random", random_rows(n_rows, n_features, seed)),
        ("coherent", coherent_rows(n_rows, n_features, seed)),
    ):
        check_agreement(estimator, packed, X)
        visits = mean_node_visits(estimator, X[: min(n_rows, 10_000)])
        seconds = time_engines(estimator, packed, X, repeats=repeats)
        reports.append(Report(kind, n_rows, packed.n_trees, visits, seconds))
        print("\n".join(reports[-1].lines()), flush=True)
    return reports


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=500)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    run(args.trees, args.rows, args.seed, args.repeats)


if __name__ == "__main__":
    main()
