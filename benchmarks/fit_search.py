"""Wall time of the fit step and the hyperparameters its search selects, per element.

Fits the demo's elements (``tpgrid demo`` settings, or ``--full`` for the full plateau) from a
demo workdir's site table and cube on a local Dask cluster of one worker process per core, and
prints one JSON line: the wall time, and per element the selected ``max_features`` and
``min_samples_leaf``, the search's wall time and the element's fit wall time. Run it with two
checkouts on the same workdir, one after the other, to compare them::

    python benchmarks/fit_search.py /tmp/demo /tmp/models
    python benchmarks/fit_search.py /tmp/full --full /tmp/models

With ``--analyse`` it then times the report's analyses of the fitted models
(``analyse_element`` of each element, one after another in this process, after one warm-up).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from tpgrid.client import dask_client
from tpgrid.config import demo_config
from tpgrid.fit import fit_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a `tpgrid demo` output directory")
    parser.add_argument("out", type=Path, help="model directory (replaced)")
    parser.add_argument("--full", action="store_true", help="the full plateau's settings")
    parser.add_argument("--analyse", action="store_true", help="time the report's analyses")
    args = parser.parse_args()
    settings = demo_config(args.out.parent / "config-unused", full=args.full).fit
    shutil.rmtree(args.out, ignore_errors=True)
    with dask_client():
        started = time.perf_counter()
        report = fit_models(
            args.workdir / "plateau" / "sites.csv", args.workdir / "cube.zarr", args.out, settings
        )
        wall = time.perf_counter() - started
    selected = {
        f.element: {
            "max_features": f.record["search"]["selected"]["max_features"],
            "min_samples_leaf": f.record["search"]["selected"]["min_samples_leaf"],
            "search_s": f.record["search"]["wall_s"],
            "fit_s": f.record["fit_wall_s"],
        }
        for f in report.fitted
    }
    result: dict[str, object] = {"wall_s": round(wall, 2), "elements": selected}
    if args.analyse:
        report = demo_config(args.out.parent / "config-unused", full=args.full).report
        result["analyses_s"] = round(time_analyses(args.out, report), 2)
    print(json.dumps(result))


def time_analyses(models: Path, settings: Any) -> float:
    """Seconds of ``analyse_element`` over every element in ``models``, with the demo
    pipeline's report settings (as a run computes them)."""
    from tpgrid.report.analysis import analyse_element
    from tpgrid.report.inputs import find_elements, load_element

    loaded = [load_element(directory) for directory in find_elements(models)]
    analyse_element(loaded[-1], {}, settings)  # compiles or loads the kernels
    started = time.perf_counter()
    for model in loaded:
        analyse_element(model, {}, settings)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
