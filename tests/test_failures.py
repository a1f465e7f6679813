"""Failures of unattended runs end in one clear message, and Ctrl-C stops a run cleanly.

Each case runs the real `tpgrid` command in its own process and checks its exit code and
stderr: one message naming the path, layer or address at fault, and no traceback. Read-only
and full file systems are real mounts (skipped where mounting is not permitted).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml

from tests.conftest import SMALL_SPEC, write_tif
from tpgrid.cli import EXIT_INTERRUPTED
from tpgrid.config import load_pipeline
from tpgrid.core.blocks import PredictOptions
from tpgrid.errors import LayerValueError
from tpgrid.publication import current_version
from tpgrid.runs import run_pipeline

TPGRID = str(Path(sys.executable).with_name("tpgrid"))

#: Two elements and no report, as in tests/test_runs.py, but forests large enough for
#: prediction to take a few seconds, so that Ctrl-C lands in it.
SETTINGS: dict[str, Any] = {
    "name": "failures",
    "synthetic": {"size": "small", "seed": 0},
    "fit": {
        "elements": ["Fe", "Ni"],
        "n_trees": 3000,
        "search_trees": 10,
        "cv_folds": 3,
        "search_grid": {"max_features": [0.5], "min_samples_leaf": [2]},
    },
    "report": {"enabled": False},
}


def write_config(path: Path, workdir: Path, **changes: Any) -> Path:
    path.write_text(yaml.safe_dump(SETTINGS | {"workdir": str(workdir)} | changes))
    return path


def tpgrid(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TPGRID, *args],
        capture_output=True,
        text=True,
        # Wide: rich wraps messages at the console width, 80 columns without a terminal.
        env={**os.environ, "COLUMNS": "1000", **(env or {})},
        timeout=timeout,
        check=False,
    )


def the_message(stderr: str, prefix: str = "error:") -> str:
    """The one message the command printed; there must be no traceback."""
    assert "Traceback" not in stderr, stderr
    messages = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(messages) == 1, stderr
    return messages[0]


def maps(directory: Path) -> dict[str, np.ndarray]:
    """Pixel values of every COG of a publication."""
    arrays = {}
    for cog in sorted(directory.glob("*.tif")):
        with rasterio.open(cog) as src:
            arrays[cog.name] = src.read(1)
    return arrays


# --- inputs and addresses --------------------------------------------------------------------


@pytest.mark.parametrize("address", ["garbage!!", "tcp://host", ""])
def test_a_malformed_scheduler_address_is_a_cluster_error_before_any_cluster(
    tmp_path: Path, address: str
) -> None:
    config = write_config(tmp_path / "p.yaml", tmp_path / "work")
    result = tpgrid("run", str(config), env={"DASK_SCHEDULER_ADDRESS": address}, timeout=120)
    assert result.returncode == 2
    message = the_message(result.stderr)
    assert f"scheduler address {address!r}" in message
    assert "tcp://HOST:PORT" in message
    assert "Dask dashboard" not in result.stderr  # no cluster was started
    assert not (tmp_path / "work").exists()  # nor anything run


@pytest.mark.parametrize(
    ("workdir", "what"), [("work", "it is a file"), ("work/inner", "a folder of it, is a file")]
)
def test_a_workdir_that_is_a_file_is_refused_before_anything(
    tmp_path: Path, workdir: str, what: str
) -> None:
    (tmp_path / "work").write_text("not a directory\n")
    config = write_config(tmp_path / "p.yaml", tmp_path / workdir)
    result = tpgrid("run", str(config), timeout=120)
    assert result.returncode == 2
    message = the_message(result.stderr)
    assert f"workdir {tmp_path / workdir}: " in message
    assert f"{what}, not a directory: move the file away" in message
    if workdir != "work":
        assert f"{tmp_path / 'work'}, a folder of it" in message
    assert "Dask dashboard" not in result.stderr
    assert (tmp_path / "work").read_text() == "not a directory\n"


@pytest.fixture
def float_classes(tmp_path: Path, standard_sources: dict[str, Any]) -> dict[str, Any]:
    """The standard sources with the land cover codes stored as float32, one block at 1.5."""
    with rasterio.open(tmp_path / "landcover.tif") as src:
        codes = src.read(1).astype("float32")
    codes[200:240, 300:340] = 1.5
    write_tif(tmp_path / "landcover.tif", codes, nodata=0)
    return standard_sources


@pytest.mark.slow
@pytest.mark.cluster
def test_a_categorical_layer_with_float_values_names_the_layer_its_file_and_the_fix(
    tmp_path: Path, float_classes: dict[str, Any], make_catalog: Callable[..., Path]
) -> None:
    catalog = make_catalog(float_classes)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(SMALL_SPEC.model_dump(mode="json")))
    out = tmp_path / "cube.zarr"
    result = tpgrid(
        "cube", "--catalog", str(catalog), "--grid", str(grid), "--out", str(out), "--workers", "1"
    )
    assert result.returncode == 2
    message = the_message(result.stderr)
    assert "layer 'landcover' is categorical" in message
    assert str(tmp_path / "landcover.tif") in message
    assert "(e.g. 1.5)" in message
    assert "write the codes as integers" in message
    assert not out.exists()


def test_whole_class_codes_stored_as_floats_make_the_same_cube(
    tmp_path: Path, standard_sources: dict[str, Any], make_catalog: Callable[..., Path]
) -> None:
    from tpgrid.cube import build_cube, open_cube
    from tpgrid.grid import TargetGrid
    from tpgrid.sources import load_catalog

    grid = TargetGrid.from_spec(SMALL_SPEC)
    ints = build_cube(load_catalog(make_catalog(standard_sources)), grid, tmp_path / "a.zarr")
    with rasterio.open(tmp_path / "landcover.tif") as src:
        codes = src.read(1)
    write_tif(tmp_path / "landcover.tif", codes.astype("float32"), nodata=0)
    catalog = load_catalog(make_catalog(standard_sources, name="floats.yaml"))
    build_cube(catalog, grid, tmp_path / "b.zarr")
    a, b = open_cube(ints.path)["landcover"], open_cube(tmp_path / "b.zarr")["landcover"]
    assert b.dtype == np.uint8
    np.testing.assert_array_equal(a.values, b.values)
    assert {1, 2, 3} <= set(np.unique(b.values).tolist()) <= {1, 2, 3, 255}


def test_the_first_error_is_not_masked_when_the_record_cannot_be_written(
    tmp_path: Path,
    float_classes: dict[str, Any],
    make_catalog: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The cube step fails on the land cover; by then the runs folder is a file (put there
    after the DEM was written): the step's error is raised, the record's failure a warning."""
    sites = tmp_path / "sites.csv"
    sites.write_text("site_id,lon,lat,Fe\n")
    config_path = tmp_path / "p.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "name": "masked",
                "workdir": "work",
                "grid": SMALL_SPEC.model_dump(mode="json"),
                "catalog": str(make_catalog(float_classes)),
                "sites": str(sites),
            }
        )
    )
    config = load_pipeline(config_path)

    def runs_folder_becomes_a_file(label: str, done: int, total: int) -> None:
        if label == "cube dem" and config.runs_dir.is_dir():
            config.runs_dir.rmdir()
            config.runs_dir.write_text("in the way\n")

    with (
        caplog.at_level(logging.WARNING, logger="tpgrid.runs"),
        pytest.raises(LayerValueError, match="layer 'landcover' is categorical"),
    ):
        run_pipeline(config, progress=runs_folder_becomes_a_file)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "tpgrid.runs"]
    assert warning.startswith("the run record was not written")
    assert str(config.runs_dir) in warning


# --- file systems ---------------------------------------------------------------------------


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"mounting is not permitted here (mount {' '.join(args)}: {result.stderr})")


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty directory on a read-only bind mount."""
    source, target = tmp_path / "source", tmp_path / "read-only"
    source.mkdir()
    target.mkdir()
    mount("--bind", str(source), str(target))
    try:
        mount("-o", "remount,ro,bind", str(target))
        yield target
    finally:
        unmount(target)


@pytest.mark.cluster
def test_a_read_only_workdir_is_one_message_naming_the_path(
    tmp_path: Path, read_only_dir: Path
) -> None:
    config = write_config(tmp_path / "p.yaml", read_only_dir)
    result = tpgrid("run", str(config), "--workers", "1")
    assert result.returncode == 2
    message = the_message(result.stderr)
    # The lock file is the first thing a run writes: it names that path.
    assert f"{read_only_dir / '.tpgrid.lock'}: read-only file system" in message
    assert "remount it read-write" in message
    assert list(read_only_dir.iterdir()) == []


@pytest.fixture(scope="module")
def lone_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workdir of a complete, uninterrupted run of the pipeline."""
    root = tmp_path_factory.mktemp("lone")
    config = write_config(root / "p.yaml", root / "work")
    result = tpgrid("run", str(config), "--workers", "2")
    assert result.returncode == 0, result.stderr
    return root / "work"


def pages(root: Path) -> int:
    """Bytes the files under ``root`` take on a tmpfs (whole 4 KiB pages)."""
    return sum(math.ceil(p.stat().st_size / 4096) * 4096 for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.cluster
def test_a_disk_that_fills_up_while_publishing_says_so_and_names_the_path(
    lone_run: Path, tmp_path: Path
) -> None:
    """The lone run's workdir without its publication, on a tmpfs with room for less than
    half of its maps: only publishing writes, and runs out of space."""
    current = current_version(lone_run / "published")
    assert current is not None
    cogs = sum(p.stat().st_size for p in current.glob("*.tif"))
    needed = pages(lone_run) - pages(lone_run / "published")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", f"size={needed + cogs // 3}", "tmpfs", str(disk))
    try:
        shutil.copytree(lone_run, disk / "work", ignore=shutil.ignore_patterns("published"))
        config = write_config(tmp_path / "p.yaml", disk / "work")
        result = tpgrid("run", str(config), "--workers", "2")
        assert result.returncode == 2, result.stderr
        message = the_message(result.stderr)
        assert "no space left on device" in message
        assert re.search(rf"{re.escape(str(disk / 'work'))}/\S+\.tif: no space left", message)
        assert current_version(disk / "work" / "published") is None
    finally:
        unmount(disk)


# --- Ctrl-C --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.cluster
def test_ctrl_c_stops_the_run_publishes_nothing_and_the_same_command_resumes(
    lone_run: Path, tmp_path: Path
) -> None:
    # The lone run's workdir without its prediction and publication: the run goes straight
    # to predicting (plateau, cube and models are unchanged).
    workdir = tmp_path / "work"
    shutil.copytree(
        lone_run, workdir, ignore=shutil.ignore_patterns("prediction.zarr", "published", "runs")
    )
    config = write_config(tmp_path / "p.yaml", workdir)
    command = [TPGRID, "run", str(config), "--workers", "2"]
    env = {**os.environ, "COLUMNS": "1000"}
    with (tmp_path / "stderr").open("w+") as stderr:
        # A process group of its own, as a terminal's foreground job: SIGINT to the group
        # reaches the command and its local worker processes, as Ctrl-C does.
        run = subprocess.Popen(
            command, stderr=stderr, stdout=subprocess.DEVNULL, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 300  # hang guard
            # Mid-prediction: once the first chunk is done (the cluster is up and its tasks
            # are running; it is started when the prediction's first task needs it).
            while not list(workdir.glob(".prediction.zarr.staging-*/_tpgrid_done/*/*")):
                assert run.poll() is None, "the run ended before predicting"
                assert time.monotonic() < deadline, "prediction never started"
                time.sleep(0.02)
            os.killpg(run.pid, signal.SIGINT)
            returncode = run.wait(timeout=60)  # hang guard, not a measure of speed
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
        stderr.seek(0)
        output = stderr.read()
    assert returncode == EXIT_INTERRUPTED
    message = the_message(output, prefix="interrupted:")
    assert "run the same command again to resume" in message
    assert "error:" not in output
    assert not (workdir / "published").exists()
    assert not (workdir / "prediction.zarr").exists()
    (staging,) = workdir.glob(".prediction.zarr.staging-*")
    assert (staging / "_tpgrid_done").is_dir()  # kept, to resume from
    (record,) = (workdir / "runs").glob("*.json")
    assert '"status": "interrupted"' in record.read_text()

    again = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert again.returncode == 0, again.stderr
    assert not list(workdir.glob(".prediction.zarr.staging-*"))
    resumed = current_version(workdir / "published")
    lone = current_version(lone_run / "published")
    assert resumed is not None
    assert lone is not None
    resumed_maps, lone_maps = maps(resumed), maps(lone)
    assert sorted(resumed_maps) == sorted(lone_maps)
    assert len(lone_maps) == 2 * len(PredictOptions().layers())  # two elements
    for name, values in lone_maps.items():
        np.testing.assert_array_equal(resumed_maps[name], values, err_msg=name)
