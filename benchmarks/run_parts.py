"""Seconds of the parts of one pipeline run: each step, and inside publishing the maps, the
report's analyses, its applicability layers and its figures.

Runs the demo pipeline (``--full``: the full plateau's settings) on an existing ``tpgrid demo``
working directory, in this process, on a fresh LocalCluster of one worker process per core
(started, and sent one task, before the clock starts), and prints one line per timed call as
it returns. With ``--change-ndvi`` it first scales NDVI by 1.05 in one 20 × 20 px window where
no site lies, as ``tpgrid bench --section end_to_end_job`` does::

    tpgrid demo --out /tmp/demo
    python benchmarks/run_parts.py /tmp/demo --change-ndvi
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tpgrid.publication
import tpgrid.report.build
import tpgrid.runs
from tpgrid.bench.job import WINDOW, change_one_window
from tpgrid.client import dask_client
from tpgrid.config import demo_config

TIMED = {
    tpgrid.runs: ("build_cube", "fit_models", "predict_cube", "publish_version"),
    tpgrid.publication: ("write_maps",),
    tpgrid.report.build: ("analyse_elements", "applicability_cube", "render_figures"),
}


def timed(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = call(*args, **kwargs)
        print(f"{name}: {time.perf_counter() - started:.2f} s", flush=True)
        return result

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a `tpgrid demo` working directory")
    parser.add_argument("--full", action="store_true", help="the full plateau's settings")
    parser.add_argument("--change-ndvi", action="store_true", help="change one NDVI window first")
    args = parser.parse_args()
    if args.change_ndvi:
        change_one_window(args.workdir / "plateau", WINDOW)
    for module, names in TIMED.items():
        for name in names:
            setattr(module, name, timed(name, getattr(module, name)))
    config = demo_config(args.workdir, full=args.full)
    with dask_client() as client:
        client.submit(sum, [1]).result()
        started = time.perf_counter()
        tpgrid.runs.run_pipeline(config)
        print(f"run: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
