"""Peak memory and wall time of a cube build, at a given grid resolution.

Builds the cube of a synthetic plateau (``tpgrid synth DIR --size full``) in this process on
dask's threaded scheduler, then prints one JSON line with the grid shape, wall time and the
process's peak resident memory. Run it at two resolutions to see that memory follows the chunk
size, not the map size::

    python benchmarks/cube_memory.py PLATEAU_DIR OUT.zarr --resolution 1000
    python benchmarks/cube_memory.py PLATEAU_DIR OUT.zarr --resolution 500

Each run is its own process, so ``ru_maxrss`` is the peak of that build alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import dask

from tpgrid.cube import build_cube
from tpgrid.grid import TargetGrid, load_grid_spec
from tpgrid.sources import load_catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plateau", type=Path, help="directory written by `tpgrid synth`")
    parser.add_argument("out", type=Path, help="Zarr cube to write (replaced if it exists)")
    parser.add_argument("--resolution", type=float, default=1000.0, help="pixel size, m")
    parser.add_argument("--chunk", type=int, default=512, help="chunk edge, px")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    spec = load_grid_spec(args.plateau / "grid.yaml").model_copy(
        update={"resolution": args.resolution, "chunk": args.chunk}
    )
    grid = TargetGrid.from_spec(spec)
    catalog = load_catalog(args.plateau / "catalog.yaml")
    shutil.rmtree(args.out, ignore_errors=True)
    started = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        report = build_cube(catalog, grid, args.out)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "resolution_m": args.resolution,
                "shape": list(report.shape),
                "pixels": report.shape[0] * report.shape[1],
                "chunk": args.chunk,
                "variables": len(report.layers),
                "chunks_written": report.chunks_written,
                "wall_s": round(seconds, 1),
                "peak_rss_mib": round(peak_mib),
            }
        )
    )


if __name__ == "__main__":
    main()
