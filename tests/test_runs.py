"""Pipeline runs on a real multi-process cluster: incremental re-runs, kills, records, CLI."""

from __future__ import annotations

import json
import os
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

from tests.conftest import DaskProcesses, start_dask_processes, stop_dask_processes
from tpgrid.cli import EXIT_UNCHANGED, app
from tpgrid.config import PipelineConfig, load_pipeline
from tpgrid.cube import chunk_hashes
from tpgrid.grid import TargetGrid, load_grid_spec
from tpgrid.outputs import open_prediction
from tpgrid.predict import load_models
from tpgrid.publication import current_version, verify_version, versions
from tpgrid.runs import RunRecord, list_runs, plan, plan_changes, run_pipeline
from tpgrid.synthetic import plateau_files

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: Small and quick: two elements, tiny forests, no report (tests/test_report.py covers it).
SETTINGS: dict[str, Any] = {
    "name": "test",
    "synthetic": {"size": "small", "seed": 0},
    "fit": {
        "elements": ["Fe", "Ni"],
        "calibrate": ["Zn", "Ni"],
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
def cluster(dask_processes: DaskProcesses) -> Iterator[Client]:
    with Client(dask_processes.address) as client:
        yield client


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
    # From the command line, with no client open: nothing to compute, so no cluster is
    # started or connected to (its dashboard link is printed when one is).
    again = subprocess.run(
        [sys.executable, "-m", "tpgrid", "run", str(tmp_path / "work.yaml"), "--workers", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Dask dashboard" not in again.stdout + again.stderr  # the CLI writes to stderr
    assert not list_runs(config)[-1]["changed"]


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
    # The cluster's workers are separate processes: each step knows the highest one's peak.
    for s in doc["steps"]:
        assert 30 < s["peak_process_mib"] < 8192, s
        assert 30 < s["peak_worker_mib"] < 8192, s


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def change_a_ni_value(config: PipelineConfig) -> None:
    table = pd.read_csv(config.sites_path)
    table.loc[table.index[table["Ni"].notna()][0], "Ni"] *= 1.1
    table.to_csv(config.sites_path, index=False)


def leave_fe_two_sites(config: PipelineConfig) -> None:
    """Fe values at two sites only: fewer than the 3 CV folds of the test pipeline (Fe, as it
    is not calibrated: Ni's calibration would fail first)."""
    table = pd.read_csv(config.sites_path)
    kept = table.loc[table["Fe"].notna(), "site_id"].unique()[:2]
    table.loc[~table["site_id"].isin(kept), "Fe"] = np.nan
    table.to_csv(config.sites_path, index=False)


def one_line(text: str) -> str:
    """Terminal output with rich's line wrapping undone."""
    return " ".join(text.split())


TOO_FEW_FE = (
    "Fe: 2 sites with usable Fe values, fewer than the 3 CV folds (every fold must test at "
    "least one site): add sites or lower the number of folds"
)


@pytest.mark.slow
def test_a_run_killed_while_publishing_leaves_the_versions_as_they_were(
    first_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(first_run, tmp_path)
    before, current = versions(config.published_dir), current_version(config.published_dir)
    change_a_ni_value(config)
    killed = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("run_then_die.py")),
            str(write_config(config.workdir)),
            cluster.scheduler.address,
            "0",
            "publish quicklooks",  # Ni's maps are in the new version's folder, no item yet
        ],
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    (partial,) = (config.published_dir / "versions").glob(".*.partial-*")
    assert (partial / "Ni_mean.tif").is_file()
    assert versions(config.published_dir) == before
    assert current_version(config.published_dir) == current
    assert current is not None
    assert verify_version(current) == []

    record = run_pipeline(config)
    published = step(record, "publish")
    assert published.action == "new"
    assert "removed 1 unfinished version(s) of killed runs" in published.detail
    assert published.counts == {"elements_kept": 1, "unfinished_removed": 1}
    assert not partial.exists()
    new = current_version(config.published_dir)
    assert new is not None
    assert versions(config.published_dir) == [*before, new]
    assert verify_version(new) == []
    assert list_runs(config)[-1]["steps"][-1]["detail"] == published.detail


def test_a_damaged_file_of_the_current_version_is_rendered_again(
    first_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(first_run, tmp_path)
    old = current_version(config.published_dir)
    assert old is not None
    flip_byte(old / "Fe_mean.tif")
    planned = plan(config)[-1]
    assert (planned.name, planned.action) == ("publish", "would update")
    assert "1 damaged file(s)" in planned.detail

    record = run_pipeline(config)
    published = step(record, "publish")
    assert published.action == "new"
    assert published.counts == {"elements_kept": 1, "files_repaired": 1}
    assert "Fe_mean.tif (content differs from its SHA-256 recorded when written)" in (
        published.detail
    )
    new = current_version(config.published_dir)
    assert new is not None
    assert new != old
    assert (new / "Fe_mean.tif").stat().st_ino != (old / "Fe_mean.tif").stat().st_ino
    for name in ("Fe_sd.tif", "Fe_quicklook.png", "Ni_mean.tif"):
        assert (new / name).stat().st_ino == (old / name).stat().st_ino
    maps, _ = open_prediction(config.prediction_path)
    with rasterio.open(new / "Fe_mean.tif") as cog:
        np.testing.assert_array_equal(cog.read(1), maps["Fe_mean"].to_numpy())
    assert verify_version(new) == []
    assert not plan_changes(plan(config))


@pytest.mark.slow
def test_an_element_left_with_too_few_sites_is_dropped_with_its_model_and_maps(
    first_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(first_run, tmp_path)
    path = write_config(config.workdir, report={"enabled": True, "applicability": False})
    config = load_pipeline(path)
    old = current_version(config.published_dir)
    assert old is not None
    chunks = config.prediction_path / "Ni_mean" / "c"
    ni_chunk = next(p for p in sorted(chunks.rglob("*")) if p.is_file())
    ni_chunk_inode = ni_chunk.stat().st_ino
    leave_fe_two_sites(config)
    planned = step_of(plan(config), "fit")
    assert planned.action == "would update"
    assert f"would drop {TOO_FEW_FE}" in planned.detail

    result = CliRunner().invoke(
        app,
        ["run", str(path), "--scheduler-address", cluster.scheduler.address],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 0, result.output
    assert f"dropped {TOO_FEW_FE}" in one_line(result.output)
    assert "report analyses" in result.output  # the report has its progress bar
    record = list_runs(config)[-1]
    fit = next(s for s in record["steps"] if s["name"] == "fit")
    assert fit["detail"] == f"refitted none; kept ['Ni']; dropped {TOO_FEW_FE}"
    assert fit["counts"] == {"refitted": 0, "dropped": 1}
    assert not (config.models_dir / "Fe").exists()
    assert [model.element for model in load_models(config.models_dir)] == ["Ni"]
    # Ni's chunks were carried over by link; the new prediction holds no Fe layer.
    predicted = next(s for s in record["steps"] if s["name"] == "predict")
    assert predicted["counts"] == {"chunks_computed": 0}
    assert ni_chunk.stat().st_ino == ni_chunk_inode
    maps, run = open_prediction(config.prediction_path)
    assert list(run["models"]) == ["Ni"]
    assert not [name for name in maps.data_vars if str(name).startswith("Fe")]

    new = current_version(config.published_dir)
    assert new is not None
    assert new != old
    assert not [p.name for p in new.iterdir() if p.name.startswith("Fe")]
    for name in ("Ni_mean.tif", "Ni_quicklook.png"):
        assert (new / name).stat().st_ino == (old / name).stat().st_ino
    page = one_line((new / "report" / "report.html").read_text())
    section = f"<h2>Elements not mapped</h2><ul class='not-mapped'><li><b>Fe</b>: {TOO_FEW_FE[4:]}"
    assert section in page
    summary = json.loads((new / "report" / "report.json").read_text())
    assert summary["not_mapped"] == {"Fe": TOO_FEW_FE[4:]}
    assert list(summary["elements"]) == ["Ni"]
    assert verify_version(new) == []


@pytest.mark.slow
def test_a_dropped_element_comes_back_when_its_sites_do(
    first_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(first_run, tmp_path)
    sites = config.sites_path.read_bytes()
    leave_fe_two_sites(config)
    run_pipeline(config)
    config.sites_path.write_bytes(sites)
    record = run_pipeline(config)
    assert step(record, "fit").detail == "refitted ['Fe']; kept ['Ni']"
    assert step(record, "publish").counts == {"elements_kept": 1}
    current = current_version(config.published_dir)
    assert current is not None
    assert (current / "Fe_mean.tif").is_file()


def test_with_fit_failures_fail_too_few_sites_fail_the_run_and_keep_current(
    first_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    config = copy_run(first_run, tmp_path)
    path = write_config(config.workdir, fit_failures="fail")
    before = current_version(config.published_dir)
    leave_fe_two_sites(config)
    result = CliRunner().invoke(
        app,
        ["run", str(path), "--scheduler-address", cluster.scheduler.address],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 2, result.output
    assert f"error: cannot fit {TOO_FEW_FE} (the pipeline's fit_failures is 'fail'" in one_line(
        result.output
    )
    assert current_version(config.published_dir) == before
    assert (config.models_dir / "Fe").is_dir()
    assert list_runs(config)[-1]["status"].startswith(f"failed: FitError: cannot fit {TOO_FEW_FE}")


def step_of(steps: list[Any], name: str) -> Any:
    return next(s for s in steps if s.name == name)


def test_a_changed_grid_replaces_the_pipelines_cube_and_the_maps_path_is_printed_whole(
    first_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    """The workdir's cube is the pipeline's own: a grid changed in the YAML rebuilds it (it used
    to fail asking for an --overwrite that `tpgrid run` does not have)."""
    config = copy_run(first_run, tmp_path)
    plateau = plateau_files(config.plateau_dir)
    spec = load_grid_spec(plateau.grid).model_dump(mode="json")
    spec["chunk"] //= 2
    own = {key: value for key, value in SETTINGS.items() if key != "synthetic"}
    path = tmp_path / "own.yaml"
    inputs = {"grid": spec, "catalog": str(plateau.catalog), "sites": str(plateau.sites)}
    path.write_text(yaml.safe_dump(own | {"workdir": "work"} | inputs))
    address = cluster.scheduler.address

    result = subprocess.run(
        [sys.executable, "-m", "tpgrid", "run", str(path), "--scheduler-address", address],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "60"},
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert recorded_step(list_runs(config)[-1], "cube")["action"] == "updated"
    assert TargetGrid.from_spec(load_pipeline(path).grid_spec()).spec.chunk == spec["chunk"]
    assert chunk_hashes(config.cube_path)  # the cube of the new grid is complete
    done = next(line for line in result.stderr.splitlines() if line.startswith("Done in"))
    assert str(current_version(config.published_dir)) in done  # on one line: it can be copied


def recorded_step(record: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in record["steps"] if s["name"] == name)


def test_a_synthetic_run_at_another_resolution_maps_the_same_plateau_on_its_own_grid(
    first_run: PipelineConfig, cluster: Client, tmp_path: Path
) -> None:
    """`synthetic: {resolution: ...}` (`tpgrid demo --resolution`): the same plateau files and
    sites, a grid of that pixel size; the truth, written on the plateau's 1 km grid, is not
    compared with maps on another grid."""
    config = copy_run(first_run, tmp_path)
    plateau = plateau_files(config.plateau_dir)
    truth_before = tree_bytes(plateau.truth_dir)
    coarse = load_pipeline(
        write_config(
            config.workdir,
            synthetic={"size": "small", "seed": 0, "resolution": 2000},
            report={"enabled": True},
        )
    )
    assert first_run.truth_files is not None
    assert coarse.truth_files is None

    record = run_pipeline(coarse)

    assert record.status == "ok"
    assert step(record, "plateau").action == "unchanged"
    assert tree_bytes(plateau.truth_dir) == truth_before
    fine = TargetGrid.from_spec(first_run.grid_spec())
    grid = TargetGrid.from_spec(coarse.grid_spec())
    assert grid.spec.resolution == 2000.0
    assert all(abs(2 * n - m) <= 2 for n, m in zip(grid.shape, fine.shape, strict=True))
    maps, _ = open_prediction(coarse.prediction_path)
    assert maps["Fe_mean"].shape == grid.shape
    assert int(np.isfinite(maps["Fe_mean"].values).sum()) > 1000
    current = current_version(coarse.published_dir)
    assert current is not None
    report = json.loads((current / "report" / "report.json").read_text())
    assert report["truth_coverage"] == []
