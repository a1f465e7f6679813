"""Wall time of publishing a workdir's maps, and what one COG's CPU time is made of.

Works on a copy: the workdir (a finished ``tpgrid demo`` one) is only read::

    python benchmarks/publish_maps.py WORKDIR OUT fresh      # every file rendered
    python benchmarks/publish_maps.py WORKDIR OUT rerun      # after a one-window change
    python benchmarks/publish_maps.py WORKDIR OUT cog-parts  # one COG's CPU, setting by setting
    python benchmarks/publish_maps.py WORKDIR OUT quicklook  # one quicklook's CPU

``fresh`` publishes the workdir's prediction into an empty publication directory. ``rerun``
publishes it (not timed), then multiplies a 20x20-pixel window of every element's mean,
variance and sd by 1.01 under a new run id, which is what the prediction rewrites after NDVI
changed there, and times publishing that. Both use a LocalCluster of one single-threaded
worker per core, started before the clock, and print one JSON line: wall seconds, and CPU
seconds of this process and the workers together.

``cog-parts`` times GDAL's COG driver on the workdir's first mean layer (median CPU seconds of
3 runs, and the file's size) with the settings tpgrid uses and with one part left out at a
time: the overviews, the statistics, compression; and with ZSTD instead of DEFLATE. Rewriting
only a COG's changed tiles could save at most what compression and overviews cost.

``quicklook`` times drawing the first element's quicklook from its COGs (median CPU seconds
of 3, after one untimed draw that imports matplotlib).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import zarr

from tpgrid.client import dask_client
from tpgrid.grid import GridSpec, TargetGrid
from tpgrid.outputs import (
    ATTR_RUN,
    open_prediction,
    write_cog,
    write_quicklook,
    write_run_record,
)
from tpgrid.publication import publish_version

#: tpgrid's COG settings (`tpgrid.outputs.cog.write_cog`) and the variants timed against them.
COG = {"COMPRESS": "DEFLATE", "LEVEL": 1, "BLOCKSIZE": 256, "OVERVIEW_RESAMPLING": "AVERAGE"}
VARIANTS: dict[str, dict[str, Any]] = {
    "tpgrid": {},
    "no statistics": {"STATISTICS": "NO"},
    "no overviews": {"OVERVIEWS": "NONE"},
    "no compression": {"COMPRESS": "NONE", "LEVEL": None},
    "zstd level 1": {"COMPRESS": "ZSTD"},
    "deflate level 6": {"LEVEL": 6},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("out", type=Path, help="scratch folder (replaced)")
    parser.add_argument("mode", choices=["fresh", "rerun", "cog-parts", "quicklook"])
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    prediction = args.out / "prediction.zarr"
    shutil.copytree(args.workdir / "prediction.zarr", prediction)
    if args.mode == "cog-parts":
        print(json.dumps(cog_parts(prediction, args.out)))
        return
    if args.mode == "quicklook":
        print(json.dumps(quicklook(prediction, args.out)))
        return
    root = args.out / "published"
    with dask_client() as client:
        client.wait_for_workers(len(client.scheduler_info()["workers"]) or 1)
        if args.mode == "rerun":
            publish_version(prediction, root)
            change_one_window(prediction)
        cpu, started = _cpu_seconds(client), time.perf_counter()
        publication = publish_version(prediction, root)
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds(client) - cpu
    print(
        json.dumps(
            {
                "mode": args.mode,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "elements_reused": list(publication.reused),
            }
        )
    )


def _cpu_seconds(client: Any) -> float:
    """CPU seconds used so far by this process and the cluster's workers: on a shared machine
    a steadier measure of the work than wall time."""
    return time.process_time() + sum(client.run(time.process_time).values())


def change_one_window(prediction: Path) -> None:
    """Scale a 20x20 window in the middle of every element's mean, variance and sd, under a new
    run id."""
    meta_path = prediction / "zarr.json"
    meta = json.loads(meta_path.read_text())
    _, run = open_prediction(prediction)
    run["run_id"] = "f" * 64
    meta["attributes"][ATTR_RUN] = write_run_record(prediction, run)
    meta_path.write_text(json.dumps(meta))
    for element in run["models"]:
        for layer in ("mean", "variance", "sd"):
            array = zarr.open_array(prediction / f"{element}_{layer}", mode="r+", zarr_format=3)
            r, c = array.shape[0] // 2, array.shape[1] // 2
            array[r : r + 20, c : c + 20] = np.asarray(array[r : r + 20, c : c + 20]) * 1.01


def quicklook(prediction: Path, out: Path) -> dict[str, Any]:
    """Median CPU seconds and size of the first element's quicklook."""
    _, run = open_prediction(prediction)
    element = next(iter(run["models"]))
    grid = TargetGrid.from_spec(GridSpec.model_validate(run["grid"]))
    for layer in ("mean", "sd"):
        write_cog(prediction / f"{element}_{layer}", out / f"{element}_{layer}.tif", grid)
    write_quicklook(out, element)
    cpu = []
    for _ in range(3):
        started = time.process_time()
        path = write_quicklook(out, element)
        cpu.append(time.process_time() - started)
    return {"cpu_s": round(statistics.median(cpu), 3), "bytes": path.stat().st_size}


def cog_parts(prediction: Path, out: Path) -> dict[str, Any]:
    """Median CPU seconds and size of the COG of the first mean layer, per setting variant."""
    _, run = open_prediction(prediction)
    layer = prediction / f"{next(iter(run['models']))}_mean"
    values = np.asarray(zarr.open_array(layer, mode="r", zarr_format=3)[:])
    tiled = out / "tiled.tif"
    with rasterio.open(
        tiled, "w", driver="GTiff", width=values.shape[1], height=values.shape[0], count=1,
        dtype=str(values.dtype), nodata=np.nan, tiled=True, blockxsize=256, blockysize=256,
    ) as dst:  # fmt: skip
        dst.write(values, 1)
    timed: dict[str, Any] = {"shape": list(values.shape)}
    for name, change in VARIANTS.items():
        options = {k: v for k, v in (COG | {"STATISTICS": "YES"} | change).items() if v}
        cpu = []
        for _ in range(3):
            started = time.process_time()
            rasterio.shutil.copy(tiled, out / "cog.tif", driver="COG", **options)
            cpu.append(time.process_time() - started)
        timed[name] = {
            "cpu_s": round(statistics.median(cpu), 3),
            "bytes": (out / "cog.tif").stat().st_size,
        }
    return timed


if __name__ == "__main__":
    main()
