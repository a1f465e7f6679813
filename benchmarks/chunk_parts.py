"""Where one chunk's prediction time goes, per element: the forest's mean and variance, the
quantile forest, the dissimilarity index, and the rest, on the largest chunks of a cube.

Runs in this process on one thread (as one worker does), on the models and cube of a pipeline's
working directory (e.g. one ``tpgrid demo --full`` made), and prints one JSON line per element
with the seconds of each part summed over the chunks, the pixels, and the forest's size::

    python benchmarks/chunk_parts.py tpgrid-demo-full --chunks 3
    python benchmarks/chunk_parts.py tpgrid-demo-full-250m --chunks 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np

from tpgrid.core.applicability import dissimilarity
from tpgrid.core.blocks import model_input
from tpgrid.core.quantiles import forest_quantiles
from tpgrid.cube import VALID, cube_grid, read_window
from tpgrid.predict import load_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a pipeline's working directory")
    parser.add_argument("--chunks", type=int, default=3, help="largest chunks to time")
    args = parser.parse_args()
    cube = args.workdir / "cube.zarr"
    grid = cube_grid(cube)
    windows = list(grid.windows())
    valid_count = [int(np.count_nonzero(read_window(cube, VALID, w))) for w in windows]
    largest = [windows[i] for i in np.argsort(valid_count)[::-1][: args.chunks]]
    for artifact in load_models(args.workdir / "models"):
        model = artifact.pixel_model
        parts = dict.fromkeys(("read", "mean_variance", "quantiles", "di"), 0.0)
        pixels = 0
        for window in largest:
            started = time.perf_counter()
            valid = read_window(cube, VALID, window) == 1
            values = {
                name: read_window(cube, name, window)[valid] for name in artifact.features.variables
            }
            X, _ = model_input(artifact.features, values, "predict")
            parts["read"] += time.perf_counter() - started
            pixels += len(X)
            started = time.perf_counter()
            model.forest.predict_mean_variance(X)
            parts["mean_variance"] += time.perf_counter() - started
            if model.membership is not None:
                trees = None if model.calibration is None else model.calibration.trees
                started = time.perf_counter()
                forest_quantiles(model.forest, model.membership, X, (0.05, 0.5, 0.95), trees=trees)
                parts["quantiles"] += time.perf_counter() - started
            if model.space is not None:
                started = time.perf_counter()
                dissimilarity(model.space, X)
                parts["di"] += time.perf_counter() - started
        print(
            json.dumps(
                {
                    "element": artifact.element,
                    "resolution": grid.spec.resolution,
                    "pixels": pixels,
                    "trees": model.forest.n_trees,
                    "nodes": int(model.forest.n_nodes),
                    "training_rows": None if model.space is None else len(model.space.points),
                }
                | {f"{part}_s": round(seconds, 2) for part, seconds in parts.items()}
                | {
                    f"{part}_us_per_pixel": round(1e6 * seconds / pixels, 2)
                    for part, seconds in parts.items()
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
