"""The per-unit costs docs/scaling.md builds its capacity plan from, measured on this machine.

Prints one JSON document with:

- ``scheduler``: no-op tasks through a LocalCluster's scheduler (2 single-threaded worker
  processes, as the bench starts them): seconds per task end to end, and the scheduler's
  resident memory per task held;
- ``broadcast``: sending a blob the size of a run's forests to every worker once, as the chunk
  engine does (``client.scatter(..., broadcast=True)``): seconds, and MB delivered per second
  to all workers together;
- ``chunk_io``: reading every variable of one interior chunk of a built cube, and writing one
  float32 layer chunk zstd-compressed as the prediction does: MB/s of decoded bytes, per core;
- ``per_chunk_on_the_client``: what a run does once per chunk in the ``tpgrid`` process itself,
  serially, before the tasks start: reading the chunk's valid-pixel mask to rank the tasks
  (ms), and the cube's chunk hashes kept in its metadata (bytes per chunk);
- ``cube_graph``: the tasks of the cube's build graph per chunk (reading, reprojecting,
  deriving and storing every variable), for the catalog the cube was built from.

Run it on an idle machine, with a cube built by a pipeline (e.g. ``tpgrid demo --full``)::

    python benchmarks/capacity.py tpgrid-demo-full/cube.zarr tpgrid-demo-full/plateau/catalog.yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from distributed import Client
from zarr.codecs import ZstdCodec

from tpgrid.bench.cluster import local_cluster
from tpgrid.cube import VALID, cube_grid, read_window
from tpgrid.cube.plan import expected_fingerprints
from tpgrid.cube.variables import plan_variables
from tpgrid.memory import peak_rss_mib
from tpgrid.sources import load_catalog

#: The forests a mean-and-variance run of the full plateau sends each worker (7 × 500 trees).
FORESTS_MB = 19.0


def noop(i: int) -> int:
    return i


def scheduler_costs(client: Client, tasks: int) -> dict[str, float]:
    """Seconds per no-op task through the scheduler, and the scheduler's memory per task held
    (futures kept, so the scheduler keeps their state, as a map's chunk tasks are kept)."""
    client.submit(noop, -1).result()
    before = client.run_on_scheduler(_rss_mib)
    started = time.perf_counter()
    futures = client.map(noop, range(tasks), pure=False)
    client.gather(futures)
    seconds = time.perf_counter() - started
    held = client.run_on_scheduler(_rss_mib)
    return {
        "tasks": tasks,
        "seconds": round(seconds, 2),
        "ms_per_task": round(1e3 * seconds / tasks, 3),
        "scheduler_kib_per_task_held": round(1024 * (held - before) / tasks, 2),
    }


def _rss_mib() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def broadcast_costs(client: Client, megabytes: float, repeats: int = 3) -> dict[str, float]:
    """Best of ``repeats``: scatter ``megabytes`` of incompressible bytes to every worker."""
    blob = np.random.default_rng(0).bytes(int(megabytes * 1e6))
    workers = len(client.scheduler_info()["workers"])
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        future = client.scatter(blob, broadcast=True, hash=False)
        best = min(best, time.perf_counter() - started)
        client.cancel(future)
    return {
        "megabytes": megabytes,
        "workers": workers,
        "seconds": round(best, 3),
        "mb_delivered_per_s": round(megabytes * workers / best, 1),
    }


def chunk_io_costs(cube: Path, repeats: int = 3) -> dict[str, float]:
    """Best of ``repeats``: decode every variable of the cube's middle chunk; encode one float32
    chunk of noisy values (as map layers are) with the prediction's codec."""
    grid = cube_grid(cube)
    group = zarr.open_group(cube, mode="r")
    names = [name for name, array in group.arrays() if array.shape == grid.shape]
    windows = list(grid.windows())
    middle = windows[len(windows) // 2]
    decoded, best_read = 0, np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        decoded = sum(np.asarray(group[name][middle.rows, middle.cols]).nbytes for name in names)
        best_read = min(best_read, time.perf_counter() - started)
    edge = grid.spec.chunk
    layer = np.random.default_rng(0).lognormal(3, 0.5, (edge, edge)).astype("float32")
    best_write = np.inf
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            out = zarr.create_array(
                Path(tmp) / f"layer{i}.zarr",
                shape=layer.shape,
                chunks=layer.shape,
                dtype="float32",
                compressors=(ZstdCodec(level=1),),
            )
            started = time.perf_counter()
            out[:, :] = layer
            best_write = min(best_write, time.perf_counter() - started)
            shutil.rmtree(Path(tmp) / f"layer{i}.zarr")
    return {
        "chunk": edge,
        "variables_read": len(names),
        "read_mb": round(decoded / 1e6, 1),
        "read_mb_per_s": round(decoded / 1e6 / best_read, 1),
        "write_mb_per_s": round(layer.nbytes / 1e6 / best_write, 1),
    }


def per_chunk_on_the_client(cube: Path, chunks: int = 200) -> dict[str, float]:
    """The client's serial reads of the valid mask (first ``chunks`` chunks, as the engine
    reads them), and the size of the cube's metadata per chunk."""
    grid = cube_grid(cube)
    windows = list(grid.windows())[:chunks]
    started = time.perf_counter()
    for window in windows:
        read_window(cube, VALID, window)
    seconds = time.perf_counter() - started
    metadata = (cube / "zarr.json").stat().st_size
    total = grid.n_chunks[0] * grid.n_chunks[1]
    return {
        "chunks": total,
        "valid_read_ms": round(1e3 * seconds / len(windows), 2),
        "metadata_bytes_per_chunk": round(metadata / total, 1),
    }


def cube_graph(cube: Path, catalog_path: Path) -> dict[str, float]:
    """Tasks of the build graph of every variable of ``catalog_path`` on the cube's grid (each
    shared node once, as the build computes them in one graph), per chunk."""
    grid = cube_grid(cube)
    catalog = load_catalog(catalog_path)
    variables = plan_variables(catalog, grid, expected_fingerprints(catalog))
    keys: set[object] = set()
    for variable in variables:
        keys.update(variable.data.__dask_graph__().keys())
    chunks = grid.n_chunks[0] * grid.n_chunks[1]
    return {
        "variables": len(variables),
        "graph_tasks": len(keys),
        "tasks_per_chunk": round(len(keys) / chunks, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cube", type=Path, help="a cube.zarr built by a pipeline")
    parser.add_argument("catalog", type=Path, help="the catalog YAML it was built from")
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks to time")
    args = parser.parse_args()
    with local_cluster(2) as client:
        scheduler = scheduler_costs(client, args.tasks)
        broadcast = broadcast_costs(client, FORESTS_MB)
    result = {
        "scheduler": scheduler,
        "broadcast": broadcast,
        "chunk_io": chunk_io_costs(args.cube),
        "per_chunk_on_the_client": per_chunk_on_the_client(args.cube),
        "cube_graph": cube_graph(args.cube, args.catalog),
        "this_process_peak_mib": round(peak_rss_mib()),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
