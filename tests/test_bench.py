"""The throughput benchmark: engines are checked before they are timed; reports are written.

A tiny forest and a few hundred rows: these tests check behaviour, never speed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor
from typer.testing import CliRunner

from tpgrid.bench import (
    EXACT,
    BenchResult,
    BenchSettings,
    EndToEndResult,
    Engine,
    KernelResult,
    ScalingRun,
    check_engine,
    kernel_benchmark,
    reference_prediction,
    targets,
    write_report,
)
from tpgrid.cli import app
from tpgrid.errors import ConfigError, EngineMismatchError

N_FEATURES = 4


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, N_FEATURES)).astype(np.float32)


@pytest.fixture(scope="module")
def estimator() -> Any:
    X = rows(200, seed=0)
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + 10.0
    return RandomForestRegressor(n_estimators=8, max_features=0.5, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def pixels() -> dict[str, np.ndarray]:
    return {"random": rows(300, seed=1), "sorted": np.sort(rows(300, seed=2), axis=0)}


@pytest.fixture(scope="module")
def kernel(estimator: Any, pixels: dict[str, np.ndarray]) -> KernelResult:
    return kernel_benchmark(estimator, pixels, threads=2, repeats=2)


class CountingEngine:
    """An engine that counts its calls and is off by ``offset``."""

    def __init__(self, estimator: Any, offset: float) -> None:
        self.estimator, self.offset, self.calls = estimator, offset, 0

    def __call__(self, X: np.ndarray) -> tuple[np.ndarray, None]:
        self.calls += 1
        return self.estimator.predict(X) + self.offset, None


def test_an_engine_that_disagrees_with_scikit_learn_is_refused_and_never_timed(
    estimator: Any, pixels: dict[str, np.ndarray]
) -> None:
    wrong = CountingEngine(estimator, offset=1e-3)
    with pytest.raises(EngineMismatchError, match="'off by a little' differs"):
        kernel_benchmark(
            estimator,
            pixels,
            repeats=3,
            extra_engines=[Engine("off by a little", "mean", wrong)],
        )
    assert wrong.calls == 1  # the check, and nothing after it


def test_an_engine_within_tolerance_is_checked_once_then_timed_every_repeat(
    estimator: Any, pixels: dict[str, np.ndarray]
) -> None:
    close = CountingEngine(estimator, offset=0.0)
    result = kernel_benchmark(
        estimator,
        {"random": pixels["random"]},
        repeats=3,
        extra_engines=[Engine("close", "mean", close)],
    )
    timing = next(t for t in result.rows[0].timings if t.engine == "close")
    assert len(timing.seconds) == 3
    assert close.calls == 1 + 1 + 3  # check, untimed warm-up, repeats


def test_a_missing_variance_is_refused(estimator: Any, pixels: dict[str, np.ndarray]) -> None:
    X = pixels["random"]
    engine = Engine("no variance", "mean+variance", lambda X: (estimator.predict(X), None))
    with pytest.raises(EngineMismatchError, match="gave no variance"):
        check_engine(engine, engine.predict(X), reference_prediction(estimator, X))


def test_every_engine_agrees_with_scikit_learns_trees(kernel: KernelResult) -> None:
    for rows_result in kernel.rows:
        names = [t.engine for t in rows_result.timings]
        assert names[0] == "tpgrid"
        assert {"scikit-learn predict", "scikit-learn, loop over trees"} <= set(names)
        for timing in rows_result.timings:
            assert timing.error <= (EXACT if "ONNX" not in timing.engine else 1e-5)
            assert len(timing.seconds) == 2


def test_a_missing_engine_package_is_skipped_and_named(
    estimator: Any, pixels: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "treelite", None)
    result = kernel_benchmark(estimator, {"random": pixels["random"][:50]}, repeats=1)
    assert set(result.skipped) == {"ONNX Runtime", "treelite GTIL"}
    assert all('pip install "tpgrid[bench]"' in why for why in result.skipped.values())
    assert not any("ONNX" in t.engine or "treelite" in t.engine for t in result.rows[0].timings)


def fake_result(kernel: KernelResult) -> BenchResult:
    scaling = [
        ScalingRun(chunk, workers, seconds, 1_000_000, 500, 400.0)
        for chunk, workers, seconds in [(256, 1, 10.0), (256, 2, 5.2), (512, 1, 9.0), (512, 2, 6.0)]
    ]
    e2e = EndToEndResult(7, 500, 2, 512, 17_000_000, 40.0, 70.0, 36.0, 480.0)
    machine = {"cpu": "test", "cores": 2, "load_average_before": [0.1], "load_average_after": [0.2]}
    return BenchResult({"seed": 0}, machine, kernel, scaling, e2e)


def test_targets_give_the_measured_ratio_and_whether_it_is_met(kernel: KernelResult) -> None:
    found = {(t.name, t.rows): t for t in targets(fake_result(kernel))}
    assert found["2 workers vs 1", "chunks 256²"].measured == pytest.approx(10.0 / 5.2)
    assert found["2 workers vs 1", "chunks 256²"].met
    assert not found["2 workers vs 1", "chunks 512²"].met  # 1.5x
    assert found["Dask layer over the bare kernel", "full plateau"].measured == pytest.approx(
        40.0 / 36.0 - 1
    )
    assert not found["Dask layer over the bare kernel", "full plateau"].met
    assert found["full plateau, wall seconds", "full plateau"].met
    loop = found["tpgrid vs scikit-learn, loop over trees", "random"]
    rows_result = kernel.rows[0]
    expected = rows_result.ns_per_pixel_tree(
        "scikit-learn, loop over trees"
    ) / rows_result.ns_per_pixel_tree("tpgrid")
    assert loop.measured == pytest.approx(expected)


def test_json_markdown_and_png_are_written(kernel: KernelResult, tmp_path: Path) -> None:
    files = write_report(fake_result(kernel), tmp_path / "out")
    doc = json.loads(files.json.read_text())
    assert {row["engine"] for row in doc["kernel"]["table"]} >= {"tpgrid", "scikit-learn predict"}
    assert doc["scaling"][0]["pixel_trees_per_s"] == pytest.approx(1_000_000 * 500 / 10.0)
    assert all("met" in target for target in doc["targets"])
    text = files.markdown.read_text()
    for heading in ("### Kernel throughput", "### Scaling", "### End to end", "### Targets"):
        assert heading in text
    assert "| tpgrid | mean+variance |" in text
    assert files.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_sections_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown benchmark sections"):
        BenchSettings(workdir=Path("w"), sections=("kernel", "speed"))


def test_the_command_names_a_bad_option_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--out", str(tmp_path), "--section", "speed"])
    assert result.exit_code == 2
    assert "unknown benchmark sections" in result.output
    assert "Traceback" not in result.output
