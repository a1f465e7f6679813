"""The throughput benchmark: engines are checked before they are timed; reports are written.

A tiny forest and a few hundred rows: these tests check behaviour, never speed.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor
from typer.testing import CliRunner

from tests.plateau_fixtures import cube_path, plateau  # noqa: F401  (fixtures)
from tpgrid.artifact import ModelArtifact
from tpgrid.bench import (
    DEFAULT_SECTIONS,
    EXACT,
    AlternativesResult,
    BenchResult,
    BenchSettings,
    EndToEndResult,
    Engine,
    JobRun,
    KernelResult,
    LayerEngine,
    LayerTiming,
    ScalingRun,
    UncertaintyResult,
    UncertaintyRows,
    alternatives_benchmark,
    check_engine,
    job_benchmark,
    kernel_benchmark,
    quantile_forest_on,
    reference_prediction,
    targets,
    uncertainty_benchmark,
    write_report,
)
from tpgrid.bench.alternatives import APPLY_UFUNC, DASK_ML, TPGRID
from tpgrid.bench.job import change_one_window
from tpgrid.bench.result import uncertainty_ratios
from tpgrid.cli import app
from tpgrid.core.features import CATEGORICAL_NODATA, CategoricalFeature, FeatureSpec
from tpgrid.core.forest import pack_forest
from tpgrid.cube import VALID, open_cube
from tpgrid.errors import BenchmarkError, ConfigError, EngineMismatchError
from tpgrid.synthetic import PlateauFiles

N_FEATURES = 4


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, N_FEATURES)).astype(np.float32)


@pytest.fixture(scope="module")
def training() -> tuple[np.ndarray, np.ndarray]:
    X = rows(200, seed=0)
    return X, np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + 10.0


@pytest.fixture(scope="module")
def estimator(training: tuple[np.ndarray, np.ndarray]) -> Any:
    forest = RandomForestRegressor(n_estimators=8, max_features=0.5, random_state=0)
    return forest.fit(*training)


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
    layers = ("mean", "variance", "sd", "unseen", "q05", "q50", "q95", "lower", "upper")
    e2e = EndToEndResult(7, 500, 2, 512, 17_000_000, 40.0, 70.0, 36.0, 480.0, layers, 130.0, 600.0)
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
    with_layers = found[
        "with quantiles, interval, DI and AOA vs mean+variance, wall", "full plateau"
    ]
    assert with_layers.measured == pytest.approx(130.0 / 40.0)
    assert not with_layers.met
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
    assert (
        "| with the default layers (q05, q50, q95, lower, upper): wall time, s | 130.0 (x3.25) |"
        in text
    )
    assert files.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_sections_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown benchmark sections"):
        BenchSettings(workdir=Path("w"), sections=("kernel", "speed"))


def test_the_command_names_a_bad_option_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--out", str(tmp_path), "--section", "speed"])
    assert result.exit_code == 2
    assert "unknown benchmark sections" in result.output
    assert "Traceback" not in result.output


def job_runs() -> list[JobRun]:
    steps = {"plateau": 2.0, "cube": 8.0, "fit": 9.0, "predict": 2.0, "publish": 15.0}
    return [
        JobRun("baseline", "small, first run", 45.0, steps),
        JobRun("this tpgrid", "small, first run", 28.0, steps | {"publish": 5.0}),
        JobRun("baseline", "full, first run", 170.0, steps | {"predict": 17.0}),
        JobRun(
            "this tpgrid",
            "full, first run",
            120.0,
            steps | {"predict": 24.0},
            {"cube": 400.0, "fit": 350.0, "predict": 600.0, "publish": 450.0},
        ),
        JobRun(
            "this tpgrid",
            "full 250 m, first run",
            1100.0,
            steps | {"cube": 160.0, "predict": 500.0, "publish": 300.0},
            {"cube": 700.0, "fit": 350.0, "predict": 1600.0, "publish": 900.0},
        ),
    ]


def test_the_job_section_targets_this_tpgrid_and_tabulates_both(
    kernel: KernelResult, tmp_path: Path
) -> None:
    result = BenchResult({"seed": 0}, fake_result(kernel).machine, job=job_runs())
    found = {(t.name, t.rows): t for t in targets(result)}
    first = found["tpgrid demo, wall seconds", "small, first run"]
    assert (first.measured, first.goal, first.met) == (28.0, 30.0, True)
    assert found["tpgrid demo, wall seconds", "full, first run"].met
    share = found["tpgrid demo, predict's share of the wall", "full, first run"]
    assert share.measured == pytest.approx(24.0 / 120.0)
    assert not share.met
    assert all(t.rows != "baseline" for t in found.values())
    assert ("tpgrid demo, wall seconds", "full 250 m, first run") not in found  # no wall goal
    maps = found["cube + predict + publish, seconds", "full 250 m, first run"]
    assert (maps.measured, maps.goal, maps.met) == (960.0, 900.0, False)
    memory = {
        case: found["peak worker memory, MiB", case]
        for case in ("full, first run", "full 250 m, first run")
    }
    assert (memory["full, first run"].measured, memory["full, first run"].met) == (600.0, True)
    assert (memory["full 250 m, first run"].measured, memory["full 250 m, first run"].met) == (
        1600.0,
        False,
    )
    text = write_report(result, tmp_path / "out").markdown.read_text()
    assert "|  | baseline | this tpgrid |" in text
    assert "| **wall** | **45.0** | **28.0** |" in text
    assert "| predict's share of the wall | 10.0% | 20.0% |" in text
    # Memory columns only for the runs that recorded it (not the baseline's).
    assert "|  | baseline | this tpgrid | this tpgrid: peak worker MiB |" in text
    assert "| predict | 17.0 | 24.0 | 600 |" in text
    assert "| **wall** | **170.0** | **120.0** | **600** |" in text
    assert "| publish | 300.0 | 900 |" in text


def test_one_window_change_scales_ndvi_in_20_by_20_pixels_away_from_every_site(
    plateau: PlateauFiles,  # noqa: F811  (the fixture)
    tmp_path: Path,
) -> None:
    import pandas as pd
    import rasterio
    from pyproj import Transformer

    copy = Path(shutil.copytree(plateau.root, tmp_path / "plateau"))
    ndvi = copy / "covariates" / "ndvi.tif"
    with rasterio.open(ndvi) as src:
        before = src.read(1)
    row, col = change_one_window(copy, 20)
    with rasterio.open(ndvi) as src:
        after = src.read(1)
        sites = pd.read_csv(plateau.sites)
        x, y = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True).transform(
            sites["lon"].to_numpy(), sites["lat"].to_numpy()
        )
        site_rows, site_cols = rasterio.transform.rowcol(src.transform, x, y)
    changed = np.argwhere(after != before)
    assert changed.min(axis=0).tolist() == [row, col]
    assert changed.max(axis=0).tolist() == [row + 19, col + 19]
    assert len(changed) == 400
    window = (slice(row, row + 20), slice(col, col + 20))
    np.testing.assert_allclose(after[window], (before[window] * 1.05).astype(before.dtype))
    inside = (
        (np.asarray(site_rows) >= row)
        & (np.asarray(site_rows) < row + 20)
        & (np.asarray(site_cols) >= col)
        & (np.asarray(site_cols) < col + 20)
    )
    assert not inside.any()


def test_a_baseline_that_is_not_an_executable_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="is not a file"):
        job_benchmark(tmp_path, baseline=tmp_path / "nope", cases=())
    with pytest.raises(ConfigError, match=r"unknown job cases \['full, 30 m'\]"):
        BenchSettings(workdir=tmp_path, job_cases=("full, first run", "full, 30 m"))
    with pytest.raises(ConfigError, match="end_to_end_job section only"):
        BenchSettings(workdir=tmp_path, sections=("kernel",), baseline=tmp_path / "tpgrid")


# --- the uncertainty section ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def uncertainty(
    estimator: Any, training: tuple[np.ndarray, np.ndarray], pixels: dict[str, np.ndarray]
) -> UncertaintyResult:
    return uncertainty_benchmark(
        estimator, *training, pixels, threads=2, repeats=2, rows_reference=40
    )


def test_the_libraries_give_tpgrids_layers_on_the_same_trees_and_fewer_rows(
    uncertainty: UncertaintyResult,
) -> None:
    assert uncertainty.skipped == {}
    for layers in uncertainty.rows:
        timing = {t.engine: t for t in layers.timings}
        assert list(timing) == [
            "tpgrid mean+variance",
            "tpgrid quantiles",
            "tpgrid per-tree + IJ",
            "quantile-forest predict",
            "forestci random_forest_error",
        ]
        assert timing["quantile-forest predict"].error == 0.0  # bit for bit
        assert timing["forestci random_forest_error"].error <= EXACT
        assert timing["tpgrid mean+variance"].error <= EXACT
        assert {t.n_pixels for t in layers.timings if t.peer} == {40}
        assert {t.n_pixels for t in layers.timings if not t.peer} == {300}
        assert all(len(t.seconds) == 2 for t in layers.timings)


class CountingLayer:
    """A library's layer computed from ``compute``, changed by ``change``; counts its calls."""

    def __init__(self, compute: Any, change: Any) -> None:
        self.compute, self.change, self.calls = compute, change, 0

    def __call__(self, X: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.change(np.array(self.compute(X), dtype=np.float64))


def one_ulp_up(values: np.ndarray) -> np.ndarray:
    values.flat[7] = np.nextafter(values.flat[7], np.inf)
    return values


@pytest.mark.parametrize(
    ("layer", "change", "refused"),
    [
        ("quantiles", one_ulp_up, True),  # quantiles must be equal bit for bit
        ("quantiles", lambda v: v, False),
        ("standard error", lambda v: v * (1 + 1e-6), True),
        ("standard error", one_ulp_up, False),  # within rounding
    ],
)
def test_a_library_that_differs_from_tpgrid_is_refused_and_never_timed(
    estimator: Any,
    training: tuple[np.ndarray, np.ndarray],
    pixels: dict[str, np.ndarray],
    layer: str,
    change: Any,
    refused: bool,
) -> None:
    import forestci

    X_train, y_train = training
    qrf = quantile_forest_on(estimator, X_train, y_train)
    compute = {
        "quantiles": lambda X: qrf.predict(X, quantiles=[0.05, 0.5, 0.95], weighted_leaves=True),
        "standard error": lambda X: forestci.random_forest_error(
            estimator, X_train.shape, X, calibrate=False
        ),
    }[layer]
    engine = CountingLayer(compute, change)
    tolerance = 0.0 if layer == "quantiles" else EXACT
    extra = [LayerEngine("a library", layer, engine, peer=True, tolerance=tolerance)]

    def run() -> UncertaintyResult:
        return uncertainty_benchmark(
            estimator, X_train, y_train, {"random": pixels["random"]}, repeats=3,
            rows_reference=40, extra_engines=extra,
        )  # fmt: skip

    if refused:
        with pytest.raises(EngineMismatchError, match="'a library' differs from 'tpgrid"):
            run()
        assert engine.calls == 1  # the check, and nothing after it
    else:
        timing = next(t for t in run().rows[0].timings if t.engine == "a library")
        assert (engine.calls, len(timing.seconds), timing.n_pixels) == (1 + 1 + 3, 3, 40)


def test_a_missing_library_is_skipped_and_named(
    estimator: Any,
    training: tuple[np.ndarray, np.ndarray],
    pixels: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "quantile_forest", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "forestci", None)
    result = uncertainty_benchmark(
        estimator, *training, {"random": pixels["random"][:50]}, repeats=1, rows_reference=10
    )
    assert set(result.skipped) == {"quantile-forest predict", "forestci random_forest_error"}
    assert all('pip install "tpgrid[bench]"' in why for why in result.skipped.values())
    assert not any(t.peer for t in result.rows[0].timings)
    bench = BenchResult({"seed": 0}, {}, uncertainty=result)
    assert [t.name for t in targets(bench)] == ["quantiles vs mean+variance, cost"]


def made_up_uncertainty() -> UncertaintyResult:
    """Timings chosen so that every ratio is known: 1,000 rows for tpgrid, 100 for the
    libraries, 10 trees."""

    def timing(engine: str, layer: str, pixels: int, seconds: list[float]) -> LayerTiming:
        return LayerTiming(engine, layer, pixels < 1000, pixels, seconds, 0.0)

    layers = UncertaintyRows(
        "chunks",
        10,
        [
            timing("tpgrid mean+variance", "mean+variance", 1000, [2e-4, 1e-4]),  # 10 ns
            timing("tpgrid quantiles", "quantiles", 1000, [3e-4, 4e-4]),  # 30 ns
            timing("tpgrid per-tree + IJ", "standard error", 1000, [2e-3]),  # 200 ns
            timing("quantile-forest predict", "quantiles", 100, [7e-4]),  # 700 ns
            timing("forestci random_forest_error", "standard error", 100, [5e-4]),  # 500 ns
        ],
    )
    return UncertaintyResult({}, 2, 2, [0.05, 0.5, 0.95], 8192, {}, [layers])


def test_uncertainty_ratios_and_targets_come_from_ns_per_pixel_tree() -> None:
    result = made_up_uncertainty()
    (ratios,) = uncertainty_ratios(result)
    assert ratios == {
        "rows": "chunks",
        "quantiles / mean+variance": 3.0,
        "IJ / mean+variance": 20.0,
        "quantile-forest / tpgrid quantiles": pytest.approx(23.33),
        "forestci / tpgrid IJ": 2.5,
    }
    found = {t.name: t for t in targets(BenchResult({"seed": 0}, {}, uncertainty=result))}
    cost = found["quantiles vs mean+variance, cost"]
    assert (cost.measured, cost.goal, cost.met) == (pytest.approx(3.0), 3.0, True)
    speed_up = found["tpgrid quantiles vs quantile-forest predict"]
    assert speed_up.measured == pytest.approx(70 / 3)
    assert speed_up.met


def test_the_uncertainty_section_is_written_with_its_row_counts(
    uncertainty: UncertaintyResult, tmp_path: Path
) -> None:
    machine = {"cpu": "test", "cores": 2, "load_average_before": [0.1], "load_average_after": [0.2]}
    files = write_report(BenchResult({"seed": 0}, machine, uncertainty=uncertainty), tmp_path)
    doc = json.loads(files.json.read_text())
    table = doc["uncertainty"]["table"]
    assert {(r["rows"], r["pixels timed"]) for r in table} == {
        ("random", 300), ("random", 40), ("sorted", 300), ("sorted", 40)
    }  # fmt: skip
    assert {r["rows"] for r in doc["uncertainty"]["ratios"]} == {"random", "sorted"}
    text = files.markdown.read_text()
    assert "### Uncertainty layers" in text
    assert "**Row counts differ**: the libraries are timed on the first 40 rows only" in text
    assert "| tpgrid quantiles | quantiles | 300 |" in text


def test_the_uncertainty_section_runs_on_the_reference_forest_but_not_by_default() -> None:
    assert "uncertainty" not in DEFAULT_SECTIONS
    BenchSettings(workdir=Path("w"), forest="reference", sections=("kernel", "uncertainty"))
    with pytest.raises(ConfigError, match="rows_reference must be at least 1"):
        BenchSettings(workdir=Path("w"), sections=("uncertainty",), rows_reference=0)


# --- the Dask user's alternative ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cube_forests(
    cube_path: Path,  # noqa: F811  (the fixture)
) -> tuple[list[ModelArtifact], dict[str, Any]]:
    """Two 6-tree forests on 400 valid pixels of the small cube (every variable, categoricals
    one-hot), as artifacts and as their scikit-learn estimators."""
    ds = open_cube(cube_path)
    valid = ds[VALID].values == 1
    rows, cols = np.nonzero(valid)
    pick = np.random.default_rng(0).choice(rows.size, 400, replace=False)
    kinds = {n: ds[n].attrs["tpgrid:kind"] for n in ds.data_vars if ds[n].attrs.get("tpgrid:kind")}
    at = {n: ds[n].values[rows[pick], cols[pick]] for n in kinds}
    categorical = []
    for name in sorted(n for n, kind in kinds.items() if kind != "continuous"):
        codes = tuple(int(c) for c in np.unique(at[name]) if c != CATEGORICAL_NODATA)
        classes = ds[name].attrs["tpgrid:classes"]
        categorical.append(CategoricalFeature(name, codes, tuple(classes[str(c)] for c in codes)))
    continuous = tuple(sorted(n for n, kind in kinds.items() if kind == "continuous"))
    spec = FeatureSpec(continuous, tuple(categorical))
    X, _ = spec.matrix(at)
    models, estimators = [], {}
    for seed, element in enumerate(("Fe", "Zn")):
        y = X[:, seed] * 3.0 + X[:, seed + 1] ** 2 + 50.0
        forest = RandomForestRegressor(6, max_features=0.5, random_state=seed).fit(X, y)
        models.append(ModelArtifact(element, pack_forest(forest), spec))
        estimators[element] = forest
    return models, estimators


@pytest.fixture(scope="module")
def alternatives(
    cube_path: Path,  # noqa: F811  (the fixture)
    cube_forests: tuple[list[ModelArtifact], dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> AlternativesResult:
    models, estimators = cube_forests
    return alternatives_benchmark(cube_path, models, estimators, tmp_path_factory.mktemp("w"), 2)


def test_the_alternatives_equal_tpgrid_and_the_closure_ships_the_forests_with_every_task(
    cube_path: Path,  # noqa: F811  (the fixture)
    alternatives: AlternativesResult,
) -> None:
    assert [run.engine for run in alternatives.runs] == [TPGRID, DASK_ML, APPLY_UFUNC]
    assert all(run.max_error <= EXACT for run in alternatives.runs)
    valid = int((open_cube(cube_path)[VALID].values == 1).sum())
    assert alternatives.pixels == 2 * valid
    tpgrid, dask_ml, loop = (alternatives.run(name) for name in (TPGRID, DASK_ML, APPLY_UFUNC))
    assert all(run.bytes_to_workers > 0 and run.tasks > 0 for run in alternatives.runs)
    # tpgrid's tasks carry no forest: the packed forests reach the workers scattered.
    assert tpgrid.task_bytes < alternatives.model_bytes
    assert tpgrid.scattered_bytes > 0
    assert loop.scattered_bytes == 0
    # The closure travels with each of the element's chunk tasks.
    chunks = alternatives.chunks
    assert chunks > 1
    assert loop.task_bytes >= chunks * alternatives.model_bytes
    assert loop.bytes_to_workers > tpgrid.bytes_to_workers
    assert dask_ml.task_bytes > tpgrid.task_bytes


def test_an_alternative_that_differs_from_tpgrid_is_refused(
    cube_path: Path,  # noqa: F811  (the fixture)
    cube_forests: tuple[list[ModelArtifact], dict[str, Any]],
    tmp_path: Path,
) -> None:
    models, estimators = cube_forests
    corrupted = {element: copy.deepcopy(forest) for element, forest in estimators.items()}
    corrupted["Zn"].estimators_[0] = corrupted["Zn"].estimators_[1]  # one tree of 6 replaced
    with pytest.raises(EngineMismatchError, match=f"engine '{DASK_ML}' differs from tpgrid's"):
        alternatives_benchmark(cube_path, models, corrupted, tmp_path, 2)


def test_the_alternatives_section_is_written_with_its_target(
    alternatives: AlternativesResult, tmp_path: Path
) -> None:
    machine = {"cpu": "test", "cores": 2, "load_average_before": [0.1], "load_average_after": [0.2]}
    files = write_report(BenchResult({"seed": 0}, machine, alternatives=alternatives), tmp_path)
    doc = json.loads(files.json.read_text())
    table = {row["engine"]: row for row in doc["alternatives"]["table"]}
    assert set(table) == {TPGRID, DASK_ML, APPLY_UFUNC}
    assert table[TPGRID]["x tpgrid's wall"] == 1.0
    (target,) = [t for t in doc["targets"] if t["name"] == f"tpgrid vs {APPLY_UFUNC}, wall"]
    loop, ours = alternatives.run(APPLY_UFUNC), alternatives.run(TPGRID)
    assert target["measured"] == pytest.approx(loop.seconds / ours.seconds)
    assert target["goal"] == 5.0
    assert "### The Dask user's alternative" in files.markdown.read_text()
    assert "alternatives" not in DEFAULT_SECTIONS
    with pytest.raises(ConfigError, match="the reference forest has no plateau"):
        BenchSettings(workdir=Path("w"), forest="reference", sections=("alternatives",))
