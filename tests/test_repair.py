"""Runs repair what they carry over: a damaged cube chunk, prediction chunk or model is found,
recomputed alone, named in the run record, and the published maps stay those of a clean run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from distributed import Client
from typer.testing import CliRunner

from tests.conftest import DaskProcesses
from tests.test_runs import copy_run, step, write_config
from tpgrid.artifact import FOREST_FILE, MODEL_FILE, load_model, verify_models
from tpgrid.cli import app
from tpgrid.config import PipelineConfig, load_pipeline
from tpgrid.core.blocks import PredictOptions
from tpgrid.cube import verify_cube
from tpgrid.predict import verify_prediction
from tpgrid.publication import current_version
from tpgrid.runs import RunRecord, list_runs, plan, plan_changes, run_pipeline

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(dask_processes: DaskProcesses) -> Iterator[Client]:
    with Client(dask_processes.address) as client:
        yield client


@pytest.fixture(scope="module")
def clean_run(cluster: Client, tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    """A complete run of the test pipeline, shared (read-only) by the tests below."""
    config = load_pipeline(write_config(tmp_path_factory.mktemp("repair") / "base"))
    run_pipeline(config)
    return config


def published_maps(config: PipelineConfig) -> dict[str, np.ndarray]:
    """Every COG of the current published version, read with rasterio."""
    current = current_version(config.published_dir)
    assert current is not None
    maps = {}
    for path in sorted(current.glob("*.tif")):
        with rasterio.open(path) as src:
            maps[path.name] = src.read(1)
    assert {f"Fe_{layer}.tif" for layer in PredictOptions().layers()} <= set(maps)
    return maps


def assert_maps_are_those_of_the_clean_run(config: PipelineConfig, clean: PipelineConfig) -> None:
    got, expected = published_maps(config), published_maps(clean)
    assert list(got) == list(expected)
    for name in expected:
        assert np.array_equal(got[name], expected[name], equal_nan=True), name


def recorded_repairs(config: PipelineConfig, name: str) -> list[str]:
    """The repairs of step ``name`` in the last run record on disk."""
    last = list_runs(config)[-1]
    return list(next(s for s in last["steps"] if s["name"] == name)["repairs"])


def rerun(config: PipelineConfig) -> tuple[RunRecord, str]:
    """Run again; the record and the name of the version current before it."""
    before = current_version(config.published_dir)
    assert before is not None
    return run_pipeline(config), before.name


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (Path.unlink, "missing"),
        (flip_a_byte, "content differs from its SHA-256 recorded when written"),
    ],
    ids=["deleted", "flipped-byte"],
)
def test_a_damaged_cube_chunk_is_recomputed_alone_and_nothing_else_changes(
    clean_run: PipelineConfig,
    cluster: Client,
    tmp_path: Path,
    damage: Callable[[Path], None],
    problem: str,
) -> None:
    config = copy_run(clean_run, tmp_path)
    chunk = config.cube_path / "ph" / "c" / "1" / "1"
    damage(chunk)
    record, version = rerun(config)
    cube = step(record, "cube")
    assert cube.counts == {"ph": 1}  # one chunk of one layer rewritten
    assert cube.repairs == (f"{chunk}: {problem}; recomputed from its source",)
    assert recorded_repairs(config, "cube") == list(cube.repairs)
    # The repaired chunk equals the lost one: no refit, no prediction, no new version.
    assert step(record, "fit").counts == {"refitted": 0}
    assert step(record, "predict").counts == {"chunks_computed": 0}
    assert step(record, "publish").action == "unchanged"
    assert current_version(config.published_dir).name == version  # type: ignore[union-attr]
    assert_maps_are_those_of_the_clean_run(config, clean_run)
    assert verify_cube(config.cube_path) == []


def test_a_deleted_prediction_chunk_is_predicted_again_alone(
    clean_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(clean_run, tmp_path)
    chunk = config.prediction_path / "Fe_mean" / "c" / "1" / "1"
    chunk.unlink()
    record, version = rerun(config)
    predict = step(record, "predict")
    assert (predict.action, predict.counts) == ("updated", {"chunks_computed": 1})
    assert predict.repairs == (f"{chunk}: missing; its element chunk predicted again",)
    assert recorded_repairs(config, "predict") == list(predict.repairs)
    assert step(record, "cube").repairs == ()
    # The same run again, complete: the version published from it stays current.
    assert step(record, "publish").action == "unchanged"
    assert current_version(config.published_dir).name == version  # type: ignore[union-attr]
    assert_maps_are_those_of_the_clean_run(config, clean_run)
    assert verify_prediction(config.prediction_path) == []


def delete_forest(directory: Path) -> None:
    (directory / FOREST_FILE).unlink()


def tamper_forest(directory: Path) -> None:
    arrays = dict(np.load(directory / FOREST_FILE))
    arrays["value"] = arrays["value"] * 2.0
    np.savez(directory / FOREST_FILE, **arrays)


def truncate_model_json(directory: Path) -> None:
    text = (directory / MODEL_FILE).read_text()
    (directory / MODEL_FILE).write_text(text[: len(text) // 3])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (delete_forest, "cannot be read"),
        (tamper_forest, "does not match the hash"),
        (truncate_model_json, "is not valid JSON"),
    ],
    ids=["deleted-forest", "tampered-forest", "truncated-model-json"],
)
def test_a_damaged_model_is_refitted_with_a_warning_and_the_maps_stay(
    clean_run: PipelineConfig,
    cluster: Client,
    tmp_path: Path,
    damage: Callable[[Path], None],
    says: str,
) -> None:
    config = copy_run(clean_run, tmp_path)
    model_hash = load_model(config.models_dir / "Fe").model_hash
    damage(config.models_dir / "Fe")
    (found,) = verify_models(config.models_dir)
    assert says in found.problem
    record, version = rerun(config)
    fit = step(record, "fit")
    assert fit.counts == {"refitted": 1}
    assert fit.detail.startswith("refitted ['Fe']; kept ['Ni']")
    (repair,) = fit.repairs
    assert repair.startswith("model Fe: ")
    assert says in repair
    assert repair.endswith("; fitted again")
    assert recorded_repairs(config, "fit") == [repair]
    # Fitting is deterministic: the refitted model is the lost one, so nothing downstream.
    assert load_model(config.models_dir / "Fe").model_hash == model_hash
    assert step(record, "predict").counts == {"chunks_computed": 0}
    assert step(record, "publish").action == "unchanged"
    assert current_version(config.published_dir).name == version  # type: ignore[union-attr]
    assert_maps_are_those_of_the_clean_run(config, clean_run)
    assert verify_models(config.models_dir) == []


def test_leftovers_of_killed_runs_are_removed_and_recorded(
    clean_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(clean_run, tmp_path)
    leftovers = [
        config.workdir / ".cube.zarr.staging-0badc0de",
        config.workdir / ".cube.zarr.retired-0badc0de",
        config.workdir / ".prediction.zarr.staging-0badc0de0badc0de",
        config.workdir / ".prediction.zarr.retired-0badc0de",
    ]
    for leftover in leftovers:
        (leftover / "zarr.json").parent.mkdir()
        (leftover / "zarr.json").write_text("{}")
    record = run_pipeline(config)
    assert not any(leftover.exists() for leftover in leftovers)
    said = step(record, "cube").repairs + step(record, "predict").repairs
    assert sorted(said) == sorted(
        f"{leftover}: left by an interrupted {what}; removed"
        for leftover, what in zip(leftovers, ["build"] * 2 + ["run"] * 2, strict=True)
    )
    assert not record.changed  # nothing else found to do


def test_tpgrid_run_prints_each_repair_after_the_steps(
    clean_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(clean_run, tmp_path)
    chunk = config.cube_path / "ph" / "c" / "1" / "1"
    chunk.unlink()
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(write_config(config.workdir)),
            "--scheduler-address",
            cluster.scheduler.address,
        ],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    repaired = [line for line in lines if line.startswith("cube: repaired ")]
    assert repaired == [f"cube: repaired {chunk}: missing; recomputed from its source"]
    steps_table = max(i for i, line in enumerate(lines) if line.strip().startswith("publish"))
    assert lines.index(repaired[0]) > steps_table


def test_the_plan_sees_damage_so_a_run_if_changed_repairs_it(
    clean_run: PipelineConfig, tmp_path: Path
) -> None:
    config = copy_run(clean_run, tmp_path)
    assert not plan_changes(plan(config))
    (config.prediction_path / "Ni_sd" / "c" / "0" / "0").unlink()
    would = [(s.name, s.detail) for s in plan(config) if s.action != "unchanged"]
    assert would[0] == ("predict", "1 of 18 element chunks")
    flip_a_byte(config.cube_path / "slope" / "c" / "2" / "2")
    (cube,) = [s for s in plan(config) if s.name == "cube"]
    assert cube.action == "would update"
    assert cube.detail == "chunk files damaged: slope"


def test_verify_names_each_damaged_file_and_a_run_repairs_them(
    clean_run: PipelineConfig, tmp_path: Path
) -> None:
    config = copy_run(clean_run, tmp_path)
    runner = CliRunner()
    intact = runner.invoke(app, ["verify", str(config.workdir)])
    assert intact.exit_code == 0, intact.output
    assert "intact" in intact.output
    current = current_version(config.published_dir)
    assert current is not None
    damaged = [
        current / "Ni_sd.tif",
        config.cube_path / "ph" / "c" / "1" / "1",
        config.models_dir / "Fe" / FOREST_FILE,
    ]
    for path in damaged:
        flip_a_byte(path)
    result = runner.invoke(app, ["verify", str(config.workdir)])
    assert result.exit_code == 4, result.output
    named = [line for line in result.output.splitlines() if line.startswith("damaged:")]
    assert len(named) == 3, result.output
    for path in damaged:
        assert sum(line.startswith(f"damaged: {path}: ") for line in named) == 1, path
    assert "Traceback" not in result.output
    run_pipeline(config)  # repairs the cube chunk and the model; publishes the map afresh
    assert runner.invoke(app, ["verify", str(config.workdir)]).exit_code == 4  # the old version
    (config.published_dir / "versions" / current.name).rename(tmp_path / "set-aside")
    after = runner.invoke(app, ["verify", str(config.workdir)])
    assert after.exit_code == 0, after.output
    assert_maps_are_those_of_the_clean_run(config, clean_run)
