"""A benchmark's result as data: its sections, the tables derived from them, and its targets.

A target is a goal (a speed-up over a peer, a scaling ratio, an overhead or a wall time) and
whether the measured value meets it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tpgrid.bench.alternatives import APPLY_UFUNC, AlternativesResult
from tpgrid.bench.alternatives import TPGRID as TPGRID_ENGINE
from tpgrid.bench.end_to_end import EndToEndResult
from tpgrid.bench.job import FULL_250M, FULL_CASES, JobRun
from tpgrid.bench.kernel import KernelResult
from tpgrid.bench.scaling import ScalingRun
from tpgrid.bench.uncertainty import (
    FORESTCI,
    MEAN_VARIANCE,
    QUANTILE_FOREST,
    QUANTILE_LAYER,
    STANDARD_ERROR,
    TPGRID,
    UncertaintyResult,
    UncertaintyRows,
)


@dataclass(frozen=True)
class BenchResult:
    settings: dict[str, Any]
    machine: dict[str, Any]
    kernel: KernelResult | None = None
    scaling: list[ScalingRun] = field(default_factory=list)
    end_to_end: EndToEndResult | None = None
    job: list[JobRun] = field(default_factory=list)
    uncertainty: UncertaintyResult | None = None
    alternatives: AlternativesResult | None = None

    def to_json(self) -> dict[str, Any]:
        """Everything measured, plus the derived tables and the targets with their verdicts."""
        doc = asdict(self)
        doc["targets"] = [asdict(t) | {"met": t.met} for t in targets(self)]
        if self.kernel is not None:
            doc["kernel"]["table"] = kernel_rows(self.kernel)
        if self.uncertainty is not None:
            doc["uncertainty"]["table"] = uncertainty_rows(self.uncertainty)
            doc["uncertainty"]["ratios"] = uncertainty_ratios(self.uncertainty)
        if self.alternatives is not None:
            doc["alternatives"]["table"] = alternatives_rows(self.alternatives)
        for entry, run in zip(doc["scaling"], self.scaling, strict=True):
            entry["pixel_trees_per_s"] = run.pixel_trees_per_s
        return doc


@dataclass(frozen=True)
class Target:
    """One goal of the benchmark: ``measured`` against ``goal`` (a ratio or seconds)."""

    name: str
    rows: str
    measured: float
    goal: float
    higher_is_better: bool = True

    @property
    def met(self) -> bool:
        if self.higher_is_better:
            return self.measured >= self.goal
        return self.measured <= self.goal


#: tpgrid's speed-up over each peer that the benchmark aims for.
SPEED_UP_GOALS = {
    "scikit-learn, loop over trees": 5.0,
    "scikit-learn predict": 2.0,
    "ONNX Runtime (skl2onnx)": 1.0,
    "treelite GTIL": 1.0,
}


#: Issue 15's goals for the quantile maps: at most this many times the cost of mean+variance,
#: and at least this many times faster than quantile-forest.
QUANTILES_OVER_MEAN_VARIANCE, QUANTILE_FOREST_SPEED_UP = 3.0, 20.0
#: The full plateau with the default uncertainty layers: at most this many times the wall time
#: of mean+variance alone.
UNCERTAINTY_LAYERS_COST = 3.0


#: Issue 16: tpgrid's wall time at least this many times shorter than the per-tree loop a Dask
#: user would wrap in xarray.apply_ufunc, at equal output (mean and variance).
ALTERNATIVE_SPEED_UP = 5.0


#: Issue 16: the full plateau at 250 m, cube → predict → publish (with the report) within this
#: many seconds on 2 cores, and no worker above this many MiB at any resolution.
MAP_250M_SECONDS = 900.0
WORKER_MIB = 1536.0

#: Wall seconds each case of the job section aims for.
JOB_GOALS = {
    "small, first run": 30.0,
    "small, no-op re-run": 3.0,
    "small, one-window re-run": 8.0,
    "full, first run": 150.0,
}


def targets(result: BenchResult) -> list[Target]:
    """Every goal that the measured sections speak to."""
    found = []
    if result.kernel is not None:
        for rows in result.kernel.rows:
            ours = rows.ns_per_pixel_tree("tpgrid")
            names = {t.engine for t in rows.timings}
            for peer, goal in SPEED_UP_GOALS.items():
                if peer in names:
                    ratio = rows.ns_per_pixel_tree(peer) / ours
                    found.append(Target(f"tpgrid vs {peer}", rows.kind, ratio, goal))
    if result.uncertainty is not None:
        for layers in result.uncertainty.rows:
            ratios = _ratios(layers)
            found.append(
                Target(
                    "quantiles vs mean+variance, cost",
                    layers.kind,
                    ratios["quantiles / mean+variance"],
                    QUANTILES_OVER_MEAN_VARIANCE,
                    False,
                )
            )
            if "quantile-forest / tpgrid quantiles" in ratios:
                found.append(
                    Target(
                        f"tpgrid quantiles vs {QUANTILE_FOREST}",
                        layers.kind,
                        ratios["quantile-forest / tpgrid quantiles"],
                        QUANTILE_FOREST_SPEED_UP,
                    )
                )
    by_chunk: dict[int, dict[int, ScalingRun]] = {}
    for run in result.scaling:
        by_chunk.setdefault(run.chunk, {})[run.workers] = run
    for chunk, runs in sorted(by_chunk.items()):
        if 1 in runs and 2 in runs:
            ratio = runs[2].pixel_trees_per_s / runs[1].pixel_trees_per_s
            found.append(Target("2 workers vs 1", f"chunks {chunk}²", ratio, 1.9))
    e2e = result.end_to_end
    if e2e is not None:
        overhead = e2e.seconds / e2e.kernel_seconds - 1
        found.append(
            Target("Dask layer over the bare kernel", "full plateau", overhead, 0.10, False)
        )
        found.append(
            Target("full plateau, wall seconds", "full plateau", e2e.seconds, 300.0, False)
        )
        if e2e.layers_seconds is not None:
            found.append(
                Target(
                    "with quantiles, interval, DI and AOA vs mean+variance, wall",
                    "full plateau",
                    e2e.layers_seconds / e2e.seconds,
                    UNCERTAINTY_LAYERS_COST,
                    False,
                )
            )
    if result.alternatives is not None and any(
        run.engine == APPLY_UFUNC for run in result.alternatives.runs
    ):
        alt = result.alternatives
        ratio = alt.run(APPLY_UFUNC).seconds / alt.run(TPGRID_ENGINE).seconds
        where = f"{alt.elements} elements, {alt.chunks} chunks"
        found.append(Target(f"tpgrid vs {APPLY_UFUNC}, wall", where, ratio, ALTERNATIVE_SPEED_UP))
    for job in result.job:
        if job.version != "this tpgrid":
            continue
        if job.case in JOB_GOALS:
            goal = JOB_GOALS[job.case]
            wall = job.wall_seconds
            found.append(Target("tpgrid demo, wall seconds", job.case, wall, goal, False))
        if job.case == "full, first run":
            share = job.prediction_share
            found.append(Target("tpgrid demo, predict's share of the wall", job.case, share, 0.25))
        if job.case == FULL_250M:
            seconds = sum(job.steps.get(step, 0.0) for step in ("cube", "predict", "publish"))
            found.append(
                Target(
                    "cube + predict + publish, seconds", job.case, seconds, MAP_250M_SECONDS, False
                )
            )
        if job.case in FULL_CASES and job.peak_worker_mib:
            peak = max(job.peak_worker_mib.values())
            found.append(Target("peak worker memory, MiB", job.case, peak, WORKER_MIB, False))
    return found


def kernel_rows(kernel: KernelResult) -> list[dict[str, Any]]:
    """The kernel section as table rows: one per engine and kind of rows."""
    table = []
    for rows in kernel.rows:
        ours = rows.ns_per_pixel_tree("tpgrid")
        for timing in rows.timings:
            ns = rows.ns_per_pixel_tree(timing.engine)
            spread = np.array(timing.seconds) * 1e9 / (rows.n_pixels * rows.n_trees)
            table.append(
                {
                    "rows": rows.kind,
                    "engine": timing.engine,
                    "output": timing.output,
                    "ns_per_pixel_tree": round(ns, 3),
                    "ns_median": round(float(np.median(spread)), 3),
                    "ns_worst": round(float(spread.max()), 3),
                    "mpixel_trees_per_s": round(1e3 / ns, 1),
                    "ns_per_node_visit": round(ns / rows.visits_per_pixel_tree, 3),
                    "tpgrid_speed_up": round(ns / ours, 2),
                    "max_error": timing.error,
                }
            )
    return table


def alternatives_rows(result: AlternativesResult) -> list[dict[str, Any]]:
    """The alternatives section as table rows: one per engine."""
    ours = result.run(TPGRID_ENGINE)
    return [
        {
            "engine": run.engine,
            "output": run.output,
            "wall seconds": round(run.seconds, 1),
            "x tpgrid's wall": round(run.seconds / ours.seconds, 2),
            "peak worker RSS (MiB)": round(run.peak_worker_rss_mib),
            "tasks": run.tasks,
            "task specs (MB)": round(run.task_bytes / 1e6, 2),
            "scattered (MB)": round(run.scattered_bytes / 1e6, 2),
            "between workers (MB)": round(run.fetched_bytes / 1e6, 2),
            "to workers (MB)": round(run.bytes_to_workers / 1e6, 2),
            "measuring (s)": round(run.measure_seconds, 2),
            "max error": run.max_error,
        }
        for run in result.runs
    ]


def uncertainty_rows(result: UncertaintyResult) -> list[dict[str, Any]]:
    """The uncertainty section as table rows: one per engine and kind of rows."""
    table = []
    for rows in result.rows:
        mean_variance = rows.ns_per_pixel_tree(TPGRID[MEAN_VARIANCE])
        for timing in rows.timings:
            ns = rows.ns_per_pixel_tree(timing.engine)
            spread = np.array(timing.seconds) * 1e9 / (timing.n_pixels * rows.n_trees)
            ours = rows.ns_per_pixel_tree(TPGRID[timing.layer])
            table.append(
                {
                    "rows": rows.kind,
                    "engine": timing.engine,
                    "layer": timing.layer,
                    "pixels timed": timing.n_pixels,
                    "ns_per_pixel_tree": round(ns, 3),
                    "ns_median": round(float(np.median(spread)), 3),
                    "x_mean_variance": round(ns / mean_variance, 2),
                    "tpgrid_speed_up": round(ns / ours, 2),
                    "max_error": timing.error,
                }
            )
    return table


def uncertainty_ratios(result: UncertaintyResult) -> list[dict[str, Any]]:
    """Per kind of rows: each layer's cost over mean+variance's, and each library's over
    tpgrid's for the same layer (ns per pixel·tree, so unequal row counts compare)."""
    return [{"rows": rows.kind} | {k: round(v, 2) for k, v in _ratios(rows).items()}
            for rows in result.rows]  # fmt: skip


def _ratios(rows: UncertaintyRows) -> dict[str, float]:
    ns = rows.ns_per_pixel_tree
    mean_variance = ns(TPGRID[MEAN_VARIANCE])
    ratios = {
        "quantiles / mean+variance": ns(TPGRID[QUANTILE_LAYER]) / mean_variance,
        "IJ / mean+variance": ns(TPGRID[STANDARD_ERROR]) / mean_variance,
    }
    if rows.has(QUANTILE_FOREST):
        ratios["quantile-forest / tpgrid quantiles"] = ns(QUANTILE_FOREST) / ns(
            TPGRID[QUANTILE_LAYER]
        )
    if rows.has(FORESTCI):
        ratios["forestci / tpgrid IJ"] = ns(FORESTCI) / ns(TPGRID[STANDARD_ERROR])
    return ratios
