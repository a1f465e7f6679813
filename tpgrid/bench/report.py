"""A benchmark's result written out: ``bench.json`` (everything measured, the derived tables,
the targets), ``bench.md`` (the tables) and ``bench.png`` (throughput and scaling plots)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tpgrid.bench.job import JobRun
from tpgrid.bench.result import (
    BenchResult,
    alternatives_rows,
    kernel_rows,
    targets,
    uncertainty_ratios,
    uncertainty_rows,
)
from tpgrid.bench.uncertainty import UncertaintyResult
from tpgrid.jsonable import plain


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    markdown: Path
    plot: Path


def write_report(result: BenchResult, out: Path) -> ReportFiles:
    """Write ``bench.json``, ``bench.md`` and ``bench.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out / "bench.json", out / "bench.md", out / "bench.png")
    files.json.write_text(json.dumps(plain(result.to_json()), indent=2) + "\n")
    files.markdown.write_text(markdown(result))
    plot(result, files.plot)
    return files


def markdown(result: BenchResult) -> str:
    """The result as markdown tables: kernel, scaling, end to end, targets."""
    parts = []
    machine = result.machine
    parts.append(
        f"Machine: {machine['cpu']}, {machine['cores']} cores; load average before "
        f"{machine['load_average_before'][0]}, after {machine['load_average_after'][0]}."
    )
    kernel = result.kernel
    if kernel is not None:
        forest = kernel.forest
        parts.append(
            f"### Kernel throughput\n\nForest: {forest['n_trees']} trees, {forest['n_nodes']:,} "
            f"nodes, max depth {forest['max_depth']}, {forest['n_features']} columns "
            f"({forest['params']}); {kernel.threads} threads for every engine; best of "
            f"{kernel.repeats} repeats (median and worst beside it)."
        )
        for rows in kernel.rows:
            table = [
                {k: v for k, v in r.items() if k != "rows"}
                for r in kernel_rows(kernel)
                if r["rows"] == rows.kind
            ]
            parts.append(
                f"**{rows.kind} rows**: {rows.n_pixels:,} pixels, "
                f"{rows.visits_per_pixel_tree:.2f} node visits per pixel·tree.\n\n"
                + markdown_table(table)
            )
        if kernel.skipped:
            parts.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in kernel.skipped.items()))
    if result.uncertainty is not None:
        parts.append(uncertainty_markdown(result.uncertainty))
    if result.scaling:
        table = [
            {
                "chunk (px)": f"{r.chunk}²",
                "workers": r.workers,
                "seconds": round(r.seconds, 1),
                "M pixel·trees/s": round(r.pixel_trees_per_s / 1e6, 1),
                "peak worker RSS (MiB)": round(r.peak_worker_rss_mib),
            }
            for r in result.scaling
        ]
        parts.append("### Scaling on a LocalCluster\n\n" + markdown_table(table))
    e2e = result.end_to_end
    if e2e is not None:
        kernel_s, tasks_s, wall_s = e2e.time_split()
        rows_ = [
            ("wall time, s", f"{e2e.seconds:.1f}"),
            ("pixels predicted (all elements)", f"{e2e.pixels:,}"),
            ("pixels/s", f"{e2e.pixels / e2e.seconds:,.0f}"),
            ("M pixel·trees/s", f"{e2e.pixels * e2e.n_trees / e2e.seconds / 1e6:.1f}"),
            ("of the wall time: bare kernel (same chunks, same threads), s", f"{kernel_s:.1f}"),
            ("of the wall time: rest of the tasks (read, X, write), s", f"{tasks_s:.1f}"),
            ("of the wall time: outside tasks (set-up, scheduling, idle), s", f"{wall_s:.1f}"),
            ("peak worker RSS, MiB", f"{e2e.peak_worker_rss_mib:.0f}"),
        ]
        if e2e.layers_seconds is not None and e2e.layers_peak_worker_rss_mib is not None:
            rows_ += [
                (
                    f"with the default layers ({', '.join(e2e.layers[4:])}): wall time, s",
                    f"{e2e.layers_seconds:.1f} (x{e2e.layers_seconds / e2e.seconds:.2f})",
                ),
                (
                    "with the default layers: peak worker RSS, MiB",
                    f"{e2e.layers_peak_worker_rss_mib:.0f}",
                ),
            ]
        parts.append(
            f"### End to end\n\n{e2e.elements} elements x {e2e.n_trees} trees, chunks "
            f"{e2e.chunk}², {e2e.workers} workers.\n\n"
            + markdown_table([{"": name, "value": value} for name, value in rows_])
        )
    if result.alternatives is not None:
        alt = result.alternatives
        skipped = "".join(f" Skipped: {k} ({v})." for k, v in alt.skipped.items())
        parts.append(
            f"### The Dask user's alternative\n\n{alt.elements} elements x {alt.n_trees} trees, "
            f"{alt.chunks} chunks of {alt.chunk}², {alt.workers} single-threaded workers, one "
            f"run each; every output equal to tpgrid's on {alt.pixels:,} valid pixels (max error "
            "beyond float32 rounding, of the value scale). Bytes to workers: the pickled task "
            "specs and data each worker received (measured there; measuring took the seconds "
            f"shown, inside the wall time); the forests pickled: {alt.model_bytes / 1e6:.1f} MB."
            f"{skipped}\n\n" + markdown_table(alternatives_rows(alt))
        )
    if result.job:
        parts.append(job_markdown(result.job))
    found = targets(result)
    if found:
        table = [
            {
                "target": t.name,
                "rows": t.rows,
                "goal": f"{'≥' if t.higher_is_better else '≤'} {t.goal:g}",
                "measured": f"{t.measured:.3g}",
                "met": "yes" if t.met else "**no**",
            }
            for t in found
        ]
        parts.append("### Targets\n\n" + markdown_table(table))
    return "\n\n".join(parts) + "\n"


def uncertainty_markdown(result: UncertaintyResult) -> str:
    """The uncertainty section: one table per kind of rows, then the ratios."""
    forest = result.forest
    peers = sorted({t.n_pixels for rows in result.rows for t in rows.timings if t.peer})
    parts = [
        f"### Uncertainty layers\n\nForest: {forest['n_trees']} trees, {forest['n_nodes']:,} "
        f"nodes, {forest['n_train']:,} training rows ({forest['draws_per_leaf']} in-bag draws "
        f"per leaf); quantiles {result.quantiles} (weighted leaves); standard error = per-tree "
        f"predictions + infinitesimal jackknife in blocks of {result.ij_block_rows:,} rows; "
        f"{result.threads} threads for every engine; best of {result.repeats} repeats. "
        "**Row counts differ**: the libraries are timed on the first "
        f"{', '.join(f'{n:,}' for n in peers) or '-'} rows only, tpgrid on all of them; ns per "
        "pixel·tree is per row each engine ran on. Errors: tpgrid's mean+variance against "
        "scikit-learn's trees, each library against tpgrid's layer on its rows."
    ]
    table = uncertainty_rows(result)
    for rows in result.rows:
        part = [
            {k: v for k, v in r.items() if k != "rows"} for r in table if r["rows"] == rows.kind
        ]
        parts.append(f"**{rows.kind} rows**\n\n" + markdown_table(part))
    parts.append(
        "**Ratios** (of ns per pixel·tree)\n\n" + markdown_table(uncertainty_ratios(result))
    )
    if result.skipped:
        parts.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in result.skipped.items()))
    return "\n\n".join(parts)


def job_markdown(runs: Sequence[JobRun]) -> str:
    """One table per case: the seconds of each step and the wall time, per version, and each
    step's highest peak worker memory for the versions that recorded it."""
    parts = ["### The whole job (`tpgrid demo`, one process per run)"]
    versions = list(dict.fromkeys(run.version for run in runs))
    for case in dict.fromkeys(run.case for run in runs):
        by_version = {run.version: run for run in runs if run.case == case}
        ran = [v for v in versions if v in by_version]
        steps = list(dict.fromkeys(name for run in by_version.values() for name in run.steps))
        measured = [v for v in ran if by_version[v].peak_worker_mib]
        rows = []
        for step in steps:
            row = {"": step} | {v: f"{by_version[v].steps.get(step, 0.0):.1f}" for v in ran}
            for v in measured:
                peak = by_version[v].peak_worker_mib.get(step)
                row[f"{v}: peak worker MiB"] = "" if peak is None else f"{peak:,.0f}"
            rows.append(row)
        wall = {"": "**wall**"} | {v: f"**{by_version[v].wall_seconds:.1f}**" for v in ran}
        share = {"": "predict's share of the wall"} | {
            v: f"{by_version[v].prediction_share:.1%}" for v in ran
        }
        for v in measured:
            wall[f"{v}: peak worker MiB"] = (
                f"**{max(by_version[v].peak_worker_mib.values()):,.0f}**"
            )
            share[f"{v}: peak worker MiB"] = ""
        rows += [wall, share]
        parts.append(f"**{case}** (seconds)\n\n" + markdown_table(rows))
    return "\n\n".join(parts)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub markdown table with the keys of the first row as its header."""
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| "
        + " | ".join(f"{row[k]:g}" if isinstance(row[k], float) else str(row[k]) for k in header)
        + " |"
        for row in rows
    ]
    return "\n".join(lines)


def plot(result: BenchResult, path: Path) -> None:
    """Throughput per engine and kind of rows; scaling with chunk size and workers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = (
        int(result.kernel is not None) + int(bool(result.scaling)) + int(bool(result.end_to_end))
    )
    figure = Figure(figsize=(6.5 * max(panels, 1), 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    k = 1
    if result.kernel is not None:
        axes = figure.add_subplot(1, max(panels, 1), k)
        k += 1
        kinds = [r.kind for r in result.kernel.rows]
        engines = [t.engine for t in result.kernel.rows[0].timings]
        width = 0.8 / len(kinds)
        for j, rows in enumerate(result.kernel.rows):
            rates = [1e3 / rows.ns_per_pixel_tree(e) for e in engines]
            axes.barh(np.arange(len(engines)) + j * width, rates, width, label=f"{kinds[j]} rows")
        axes.set_yticks(np.arange(len(engines)) + width * (len(kinds) - 1) / 2, engines)
        axes.invert_yaxis()
        axes.set_xscale("log")
        axes.set_xlabel(f"M pixel·trees per second ({result.kernel.threads} threads)")
        axes.set_title("Kernel throughput (higher is better)")
        axes.legend()
    if result.scaling:
        axes = figure.add_subplot(1, max(panels, 1), k)
        for workers in sorted({r.workers for r in result.scaling}):
            runs = sorted(
                (r for r in result.scaling if r.workers == workers), key=lambda r: r.chunk
            )
            axes.plot(
                [r.chunk for r in runs],
                [r.pixel_trees_per_s / 1e6 for r in runs],
                marker="o",
                label=f"{workers} worker{'s' if workers > 1 else ''}",
            )
        axes.set_xscale("log", base=2)
        axes.set_xlabel("cube chunk edge (px)")
        axes.set_ylabel("M pixel·trees per second")
        axes.set_title("Full prediction on a LocalCluster")
        axes.legend()
        k += 1
    if result.end_to_end is not None:
        e2e = result.end_to_end
        axes = figure.add_subplot(1, max(panels, 1), k)
        left = 0.0
        for part, seconds in zip(
            ("bare kernel", "rest of the tasks", "outside tasks"), e2e.time_split(), strict=True
        ):
            axes.barh([0], [seconds], left=left, label=f"{part}: {seconds:.1f} s")
            left += seconds
        axes.set_yticks([])
        axes.set_xlabel("seconds of wall time")
        axes.set_title(
            f"Full plateau, {e2e.elements} elements x {e2e.n_trees} trees, {e2e.workers} workers"
        )
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25))
    figure.savefig(path, dpi=110)
