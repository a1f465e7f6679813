"""The whole job as a user runs it: ``tpgrid demo`` first runs, no-op re-runs and a re-run after
a one-window covariate change, timed as separate processes, this tpgrid beside a baseline.

Each case is the wall time of a ``tpgrid demo`` process (start-up, cluster, every step,
shutdown) and the seconds of each step from the run record it wrote. With a ``baseline`` (the
``tpgrid`` executable of another install, e.g. of an older commit in its own venv), every case
runs for both, the two taking turns case by case so that other load hits them alike.

Cases, in order, on a fresh working directory per version:

1. ``small, first run``: ``tpgrid demo`` (writes the small plateau, then every step);
2. ``small, no-op re-run``: the same again (nothing changed);
3. ``small, one-window re-run``: after NDVI was changed (×1.05) in one 20 × 20 px window of its
   source raster where no site lies, the same again;
4. ``full, first run``: ``tpgrid demo --full`` with the full plateau's files already in place
   (written once, copied in untimed), so cube → fit → predict → publish → report;
5. ``full 250 m, first run`` (only when asked for: it takes many minutes):
   ``tpgrid demo --full --resolution 250``, the same plateau files on 16 times the pixels.

Each step's peak resident memory (the highest worker's, and the ``tpgrid`` process's) comes
from the run record too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tpgrid.bench.settings import DEFAULT_JOB_CASES, JOB_CASES, Log
from tpgrid.errors import BenchmarkError
from tpgrid.synthetic import plateau_files, reuse_or_write_plateau

FULL_250M = JOB_CASES[-1]
#: The cases that run on the full plateau's files, and the --resolution each passes.
FULL_CASES = {"full, first run": None, FULL_250M: 250}
#: Edge of the changed window, source pixels.
WINDOW = 20


@dataclass(frozen=True)
class JobRun:
    """One timed ``tpgrid demo`` process: which install, which case, its wall time, and the
    seconds and the highest worker's peak memory (MiB) of each of its steps (from its run
    record; no memory from installs that did not record it)."""

    version: str
    case: str
    wall_seconds: float
    steps: dict[str, float]
    peak_worker_mib: dict[str, float] = field(default_factory=dict)

    @property
    def prediction_share(self) -> float:
        """The predict step's share of the wall time."""
        return self.steps.get("predict", 0.0) / self.wall_seconds


def job_benchmark(
    workdir: Path,
    baseline: Path | None = None,
    cases: Sequence[str] = DEFAULT_JOB_CASES,
    seed: int = 0,
    log: Log = lambda _: None,
) -> list[JobRun]:
    """Time the ``cases`` (of :data:`~tpgrid.bench.settings.JOB_CASES`) for this tpgrid and,
    if given, the ``baseline`` executable."""
    versions = {"this tpgrid": [sys.executable, "-m", "tpgrid"]}
    if baseline is not None:
        if not baseline.is_file():
            raise BenchmarkError(
                f"baseline {baseline} is not a file: pass the tpgrid executable of another "
                "install (e.g. /tmp/before/bin/tpgrid)"
            )
        versions["baseline"] = [str(baseline)]
    root = workdir / "job"
    root.mkdir(parents=True, exist_ok=True)
    full_plateau = None
    if set(FULL_CASES) & set(cases):
        log("end-to-end job: the full plateau's files (written once, then reused)")
        full_plateau = reuse_or_write_plateau(root / "plateau-full", "full", seed).root
    runs = []
    for case in cases:
        for version, command in versions.items():
            out = root / f"{version.replace(' ', '-')}-{case.split(',')[0].replace(' ', '-')}"
            if case == "small, first run" or case in FULL_CASES:
                shutil.rmtree(out, ignore_errors=True)
            if case in FULL_CASES:
                assert full_plateau is not None
                shutil.copytree(full_plateau, out / "plateau")
            if case == "small, one-window re-run":
                change_one_window(out / "plateau", WINDOW)
            args = [*command, "demo", "--out", str(out), "--seed", str(seed)]
            if case in FULL_CASES:
                args.append("--full")
                resolution = FULL_CASES[case]
                if resolution is not None:
                    args += ["--resolution", str(resolution)]
            log(f"end-to-end job: {version}, {case}")
            runs.append(_timed_run(version, case, args, out))
    return runs


def _timed_run(version: str, case: str, args: list[str], out: Path) -> JobRun:
    records = out / "runs"
    before = set(records.glob("*.json")) if records.is_dir() else set()
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchmarkError(
            f"{' '.join(args)} failed (exit {done.returncode}):\n{done.stdout[-2000:]}"
            f"{done.stderr[-2000:]}"
        )
    new = sorted(set(records.glob("*.json")) - before)
    if not new:
        raise BenchmarkError(f"{' '.join(args)} wrote no run record into {records}")
    record = json.loads(new[-1].read_text())
    steps = record["steps"]
    return JobRun(
        version,
        case,
        wall,
        {s["name"]: s["seconds"] for s in steps},
        {s["name"]: s["peak_worker_mib"] for s in steps if s.get("peak_worker_mib") is not None},
    )


def change_one_window(plateau: Path, edge: int) -> tuple[int, int]:
    """Multiply NDVI by 1.05 in one ``edge`` × ``edge`` window of its source raster, where every
    pixel has data and no site lies within the window or one window around it; returns the
    window's (row, col) origin. The first such window scanning from the raster's centre."""
    import rasterio
    from pyproj import Transformer

    files = plateau_files(plateau)
    sites = pd.read_csv(files.sites)
    ndvi = files.root / "covariates" / "ndvi.tif"
    with rasterio.open(ndvi, "r+") as src:
        to_src = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True)
        x, y = to_src.transform(sites["lon"].to_numpy(), sites["lat"].to_numpy())
        rows, cols = rasterio.transform.rowcol(src.transform, x, y)
        taken = np.zeros((src.height // edge + 1, src.width // edge + 1), dtype=bool)
        rows, cols = np.asarray(rows) // edge, np.asarray(cols) // edge
        inside = (rows >= 0) & (rows < taken.shape[0]) & (cols >= 0) & (cols < taken.shape[1])
        taken[rows[inside], cols[inside]] = True
        centre = np.array([src.height // edge // 2, src.width // edge // 2])
        cells = np.argwhere(np.ones_like(taken))
        for cell in cells[np.argsort(np.abs(cells - centre).sum(axis=1), kind="stable")]:
            r, c = (int(v) for v in cell)
            if taken[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].any():
                continue
            window = rasterio.windows.Window(c * edge, r * edge, edge, edge)
            values = src.read(1, window=window, masked=True)
            if values.shape != (edge, edge) or np.ma.getmaskarray(values).any():
                continue
            src.write((values.data * 1.05).astype(values.dtype), 1, window=window)
            return r * edge, c * edge
    raise BenchmarkError(f"no {edge} × {edge} window of {ndvi} is free of sites")
