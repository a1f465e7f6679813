"""Shared fixtures: real GeoTIFFs on disk, written with rasterio, and small target grids."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine

from tpgrid.grid import PLATEAU_GRID, TargetGrid

# A small 1 km grid in the plateau's interior: 370 × 364 px, 3 × 3 chunks of 128 px.
SMALL_SPEC = PLATEAU_GRID.model_copy(update={"bbox": (90.0, 30.0, 94.0, 33.0), "chunk": 128})

# A 30″ geographic source grid that covers SMALL_SPEC with a margin.
SOURCE_WEST, SOURCE_NORTH, SOURCE_STEP = 89.5, 33.5, 1 / 120
SOURCE_SHAPE = (480, 720)


@pytest.fixture(scope="session")
def small_grid() -> TargetGrid:
    return TargetGrid.from_spec(SMALL_SPEC)


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:4326",
    transform: Affine | None = None,
    nodata: float | None = None,
) -> Path:
    """Write a tiled single-band GeoTIFF (a real file that GDAL reads back)."""
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype,
        "transform": transform
        or Affine(SOURCE_STEP, 0, SOURCE_WEST, 0, -SOURCE_STEP, SOURCE_NORTH),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def source_lonlat() -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre lon (1-D, x) and lat (1-D, y) of the standard 30″ source grid."""
    rows, cols = SOURCE_SHAPE
    lon = SOURCE_WEST + (np.arange(cols) + 0.5) * SOURCE_STEP
    lat = SOURCE_NORTH - (np.arange(rows) + 0.5) * SOURCE_STEP
    return lon, lat


def linear_field(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """A field linear in lon/lat, in metres-like units, well inside [0, 9000]."""
    return 3000.0 + 150.0 * (lon - 89.0) + 80.0 * (lat - 29.0)


@pytest.fixture
def make_catalog(tmp_path: Path) -> Callable[..., Path]:
    """Write a catalog YAML next to its sources and return its path."""

    def make(
        layers: dict[str, Any], terrain: str | None = None, name: str = "catalog.yaml"
    ) -> Path:
        doc: dict[str, Any] = {"layers": layers}
        if terrain:
            doc["terrain"] = {"dem": terrain}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return make


@pytest.fixture
def standard_sources(tmp_path: Path) -> dict[str, Any]:
    """A DEM linear in lon/lat with a nodata hole, and a 3-class categorical map, at 30″."""
    lon, lat = source_lonlat()
    dem = linear_field(lon[None, :], lat[:, None]).astype("float32")
    dem[200:230, 300:330] = -9999.0  # a 30 × 30 px (≈ 3 km) void near 92.0 °E, 31.6 °N
    codes = ((np.arange(720)[None, :] // 60 + np.arange(480)[:, None] // 60) % 3 + 1).astype(
        "uint8"
    )
    write_tif(tmp_path / "dem.tif", dem, nodata=-9999.0)
    write_tif(tmp_path / "landcover.tif", codes, nodata=0)
    return {
        "dem": {
            "path": "dem.tif",
            "kind": "continuous",
            "group": "topography",
            "units": "m",
            "valid_range": [0, 9000],
        },
        "landcover": {
            "path": "landcover.tif",
            "kind": "categorical",
            "group": "categorical",
            "classes": {1: "forest", 2: "meadow", 3: "desert"},
        },
    }


@dataclass
class DaskProcesses:
    """A scheduler and workers started as separate `dask` processes on 127.0.0.1."""

    address: str
    scheduler_file: Path
    workers: list[subprocess.Popen[bytes]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_dask_processes(
    tmp_dir: Path, n_workers: int = 2
) -> tuple[subprocess.Popen[bytes], DaskProcesses]:
    """`dask scheduler` and ``n_workers`` single-threaded `dask worker` processes."""
    dask_cli = str(Path(sys.executable).with_name("dask"))
    port = _free_port()
    scheduler_file = tmp_dir / "scheduler.json"
    log = (tmp_dir / "scheduler.log").open("wb")
    scheduler = subprocess.Popen(
        [
            dask_cli,
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            "127.0.0.1:0",
            "--scheduler-file",
            str(scheduler_file),
        ],
        stdout=log,
        stderr=log,
    )
    address = f"tcp://127.0.0.1:{port}"
    workers = [
        subprocess.Popen(
            [
                dask_cli,
                "worker",
                address,
                "--nthreads",
                "1",
                # No nanny: the process started here is the worker itself, so killing it
                # kills the worker (a nanny would restart it).
                "--no-nanny",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--name",
                f"w{i}",
            ],
            stdout=(tmp_dir / f"worker{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for i in range(n_workers)
    ]
    from distributed import Client

    processes = DaskProcesses(address, scheduler_file, workers)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with Client(address, timeout="2s") as client:
                    if n_workers:
                        timeout = max(1.0, deadline - time.monotonic())
                        client.wait_for_workers(n_workers, timeout=timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    except BaseException:
        stop_dask_processes(scheduler, processes)  # no scheduler left behind by a failed start
        raise
    return scheduler, processes


def stop_dask_processes(scheduler: subprocess.Popen[bytes], processes: DaskProcesses) -> None:
    for proc in [*processes.workers, scheduler]:
        proc.terminate()
    for proc in [*processes.workers, scheduler]:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskProcesses]:
    """A real multi-process cluster for one test module; see :func:`start_dask_processes`."""
    scheduler, processes = start_dask_processes(tmp_path_factory.mktemp("dask"))
    try:
        yield processes
    finally:
        stop_dask_processes(scheduler, processes)
