"""Pipeline runs on a real multi-process cluster: incremental re-runs, kills, records, CLI."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from distributed import Client
from typer.testing import CliRunner

from tests.conftest import start_dask_processes, stop_dask_processes
from tpgrid.cli import EXIT_UNCHANGED, app
from tpgrid.config import PipelineConfig, load_pipeline
from tpgrid.cube import chunk_hashes
from tpgrid.grid import TargetGrid
from tpgrid.publication import current_version
from tpgrid.runs import RunRecord, list_runs, plan, plan_changes, run_pipeline

pytestmark = pytest.mark.cluster

#: Small and quick: two elements, tiny forests, no report (tests/test_report.py covers it).
SETTINGS: dict[str, Any] = {
    "name": "test",
    "synthetic": {"size": "small", "seed": 0},
    "fit": {
        "elements": ["Fe", "Ni"],
        "n_trees": 20,
        "search_trees": 10,
        "cv_folds": 3,
        "search_grid": {"max_features": [0.5], "min_samples_leaf": [2]},
    },
    "report": {"enabled": False},
}


def write_config(workdir: Path, **changes: Any) -> Path:
    path = workdir.parent / f"{workdir.name}.yaml"
    path.write_text(yaml.safe_dump(SETTINGS | {"workdir": workdir.name} | changes))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    scheduler, processes = start_dask_processes(tmp_path_factory.mktemp("dask"))
    try:
        with Client(processes.address) as client:
            yield client
    finally:
        stop_dask_processes(scheduler, processes)


@pytest.fixture(scope="module")
def first_run(cluster: Client, tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    """A complete run of the test pipeline, shared (read-only) by the tests below."""
    config = load_pipeline(write_config(tmp_path_factory.mktemp("runs") / "base"))
    run_pipeline(config)
    return config


def copy_run(config: PipelineConfig, tmp_path: Path) -> PipelineConfig:
    """A copy of a finished run's workdir (links in 'published' kept), to change and re-run."""
    workdir = tmp_path / "work"
    shutil.copytree(config.workdir, workdir, symlinks=True)
    return load_pipeline(write_config(workdir))


def step(record: RunRecord, name: str) -> Any:
    return next(s for s in record.steps if s.name == name)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_a_run_publishes_maps_and_records_itself(first_run: PipelineConfig) -> None:
    current = current_version(first_run.published_dir)
    assert current is not None
    assert {"Fe_mean.tif", "Ni_sd.tif", "item.json", "Fe_quicklook.png"} <= {
        p.name for p in current.iterdir()
    }
    (record,) = list_runs(first_run)
    assert record["status"] == "ok"
    assert [s["name"] for s in record["steps"]] == ["plateau", "cube", "fit", "predict", "publish"]
    assert record["published"] == current.name


def test_a_rerun_with_nothing_changed_computes_nothing(
    first_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(first_run, tmp_path)
    assert not plan_changes(plan(config))
    record = run_pipeline(config)
    assert not record.changed
    assert step(record, "cube").counts == {}
    assert step(record, "fit").counts == {"refitted": 0}
    assert step(record, "predict").counts == {"chunks_computed": 0}
    assert step(record, "publish").action == "unchanged"


def test_a_covariate_changed_in_one_region_recomputes_only_its_chunks(
    first_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(first_run, tmp_path)
    before = chunk_hashes(config.cube_path)
    # NPP +20 % in a 0.25° box of the north-west corner, where no site lies.
    npp = config.plateau_dir / "covariates" / "npp.tif"
    box = (90.05, 32.7, 90.3, 32.95)
    assert not sites_inside(config, box)
    with rasterio.open(npp, "r+") as src:
        values = src.read(1)
        rows, cols = np.indices(values.shape)
        xs, ys = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel())
        lon, lat = lonlat(src.crs, np.asarray(xs), np.asarray(ys))
        inside = ((lon > box[0]) & (lon < box[2]) & (lat > box[1]) & (lat < box[3])).reshape(
            values.shape
        )
        values[inside & (values > 0)] *= 1.2
        src.write(values, 1)
    steps = plan(config)
    assert next(s.name for s in steps if s.action != "unchanged") == "cube"
    assert "npp" in steps[0].detail

    record = run_pipeline(config)
    after = chunk_hashes(config.cube_path)
    changed = {key for key in after["npp"] if after["npp"][key] != before["npp"][key]}
    assert 1 <= len(changed) < len(after["npp"])
    assert step(record, "cube").counts == {"npp": len(changed)}
    assert step(record, "fit").counts == {"refitted": 0}  # no site saw the change
    # Every element model reads npp: each re-predicts exactly the changed chunks.
    assert step(record, "predict").counts == {"chunks_computed": 2 * len(changed)}
    assert step(record, "publish").action == "new"
    assert step(record, "publish").counts == {"elements_kept": 0}  # every map changed


def test_a_site_table_change_refits_only_the_affected_element(
    first_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(first_run, tmp_path)
    table = pd.read_csv(config.sites_path)
    first_ni = table.index[table["Ni"].notna()][0]
    table.loc[first_ni, "Ni"] *= 1.1
    table.to_csv(config.sites_path, index=False)
    record = run_pipeline(config)
    assert step(record, "fit").detail.startswith("refitted ['Ni']; kept ['Fe']")
    n_chunks = len(list(TargetGrid.from_spec(config.grid_spec()).windows()))
    assert step(record, "predict").counts == {"chunks_computed": n_chunks}  # Ni's only
    # Fe's maps did not change: the new version links Fe's files from the previous one.
    assert step(record, "publish").counts == {"elements_kept": 1}
    versions = sorted((config.published_dir / "versions").iterdir())
    old, new = versions[-2], versions[-1]
    for name in ("Fe_mean.tif", "Fe_quicklook.png"):
        assert (old / name).stat().st_ino == (new / name).stat().st_ino
    assert (old / "Ni_mean.tif").stat().st_ino != (new / "Ni_mean.tif").stat().st_ino


def test_a_run_killed_mid_prediction_resumes_to_the_same_bytes(
    first_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(first_run, tmp_path)
    shutil.rmtree(config.prediction_path)
    killed = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("run_then_die.py")),
            str(write_config(config.workdir)),
            cluster.scheduler.address,
            "4",
        ],
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    assert not config.prediction_path.exists()
    (staging,) = config.workdir.glob(".prediction.zarr.staging-*")
    assert len(list((staging / "_tpgrid_done").rglob("*.*"))) >= 4
    record = run_pipeline(config)
    assert step(record, "predict").counts["chunks_computed"] <= 18 - 4
    assert not list(config.workdir.glob(".prediction.zarr.staging-*"))
    assert tree_bytes(config.prediction_path) == uninterrupted_bytes(config)


def test_a_worker_killed_mid_prediction_does_not_stop_the_run(
    first_run: PipelineConfig, tmp_path: Path
) -> None:
    (tmp_path / "dask").mkdir()
    scheduler, processes = start_dask_processes(tmp_path / "dask")
    try:
        config = copy_run(first_run, tmp_path)
        shutil.rmtree(config.prediction_path)
        victim = processes.workers[0]

        def kill_a_worker(label: str, done: int, total: int) -> None:
            if label.startswith("predict") and done == 2 and victim.poll() is None:
                victim.send_signal(signal.SIGKILL)

        with Client(processes.address):
            run_pipeline(config, progress=kill_a_worker)
            assert victim.poll() == -signal.SIGKILL
            assert tree_bytes(config.prediction_path) == uninterrupted_bytes(config)
    finally:
        stop_dask_processes(scheduler, processes)


def uninterrupted_bytes(config: PipelineConfig) -> dict[str, bytes]:
    """The prediction group of the same run done again without interruption, at the same path
    (the run record names the cube by its path)."""
    shutil.move(config.prediction_path, config.workdir / "kept.zarr")
    try:
        run_pipeline(config)
        return tree_bytes(config.prediction_path)
    finally:
        shutil.rmtree(config.prediction_path)
        shutil.move(config.workdir / "kept.zarr", config.prediction_path)


def test_if_changed_exits_3_when_nothing_changed_and_dry_run_says_why(
    first_run: PipelineConfig, tmp_path: Path
) -> None:
    config = copy_run(first_run, tmp_path)
    path = write_config(config.workdir)
    runner = CliRunner()
    unchanged = runner.invoke(app, ["run", str(path), "--if-changed"])
    assert unchanged.exit_code == EXIT_UNCHANGED
    assert "no input changed" in unchanged.output
    table = pd.read_csv(config.sites_path)
    table.loc[table.index[table["Fe"].notna()][0], "Fe"] += 100.0
    table.to_csv(config.sites_path, index=False)
    dry = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert dry.exit_code == 0
    assert "would update" in dry.output
    assert "Fe" in dry.output
    assert len(list_runs(config)) == 1  # neither command ran anything


def test_the_cron_wrapper_exits_0_when_nothing_changed(
    first_run: PipelineConfig, tmp_path: Path
) -> None:
    config = copy_run(first_run, tmp_path)
    script = Path(__file__).resolve().parents[1] / "pipelines" / "schedule" / "tpgrid-refresh.sh"
    bin_dir = str(Path(sys.executable).parent)  # where pip put the `tpgrid` command
    result = subprocess.run(
        [str(script), str(write_config(config.workdir))],
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no input changed: nothing to do" in result.stdout


def test_runs_lists_the_records(first_run: PipelineConfig) -> None:
    result = CliRunner().invoke(
        app, ["runs", str(write_config(first_run.workdir))], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 0
    (record,) = list_runs(first_run)
    assert record["id"] in result.output


def test_a_failed_run_is_recorded_and_publishes_nothing(
    first_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(first_run, tmp_path)
    before = current_version(config.published_dir)
    (config.plateau_dir / "covariates" / "ph.tif").write_bytes(b"not a tiff")
    with pytest.raises(Exception, match="ph"):
        run_pipeline(config)
    last = list_runs(config)[-1]
    assert last["status"].startswith("failed")
    assert current_version(config.published_dir) == before


def sites_inside(config: PipelineConfig, box: tuple[float, float, float, float]) -> bool:
    table = pd.read_csv(config.sites_path)
    lon, lat = table["lon"], table["lat"]
    return bool(((lon > box[0]) & (lon < box[2]) & (lat > box[1]) & (lat < box[3])).any())


def lonlat(crs: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(x, y)
    return np.asarray(lon), np.asarray(lat)


def test_run_records_are_json_with_timings(first_run: PipelineConfig) -> None:
    (path,) = first_run.runs_dir.glob("*.json")
    doc = json.loads(path.read_text())
    assert all(s["seconds"] >= 0 for s in doc["steps"])
    assert doc["versions"]["tpgrid"]
