"""Cross-conformal coverage of the calibrated interval, every method × calibration schemes.

Reads the models `tpgrid fit` wrote (their held-out results: every row predicted by the grouped
and spatial CV forests that did not see it, with its DI) and, per element, recalibrates each
interval method of `tpgrid.core.intervals` on the grouped rows, the spatial rows, and both
pooled, as `tpgrid.fit.intervals.interval_calibration` does for the published one. Prints one
line per element × method × calibration × evaluated scheme: coverage and mean width overall,
coverage per tercile of the predicted mean (low, mid, high), then coverage per DI bin (n
sites); and a summary per method × calibration over the elements::

    python benchmarks/intervals.py /tmp/full/models [--level 0.9] [--json out.json]

With ``--published`` it prints instead what each model records of its published interval
(``record["intervals"]``): method, calibration schemes, coverage and mean width per CV scheme,
overall and per DI bin.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd

from tpgrid.artifact import load_held_out, load_model
from tpgrid.core.intervals import IntervalMethod, cross_conformal
from tpgrid.fit import TRAINING_FILE, HeldOutResults
from tpgrid.fit.intervals import interval_calibration, scheme_held_out

POOLINGS = (("grouped",), ("spatial",), ("grouped", "spatial"))


def element_table(directory: Path, level: float) -> list[dict[str, Any]]:
    held = HeldOutResults.from_arrays(load_held_out(directory))
    training = pd.read_parquet(directory / TRAINING_FILE)
    observed = training["observed"].to_numpy(dtype=np.float64)
    sites = training["site_id"].to_numpy()
    schemes = scheme_held_out(held, observed, sites)
    rows = []
    for method in get_args(IntervalMethod):
        for pooling in POOLINGS:
            _, record = interval_calibration(held, observed, sites, level, method, pooling)
            for scheme, summary in record["coverage"].items():
                rows_of = schemes[scheme]
                used = [schemes[s] for s in pooling]
                lower, upper = cross_conformal(method, level, (0.05, 0.95), used, rows_of)
                tercile = np.digitize(rows_of.mean, np.quantile(rows_of.mean, [1 / 3, 2 / 3]))
                inside = (observed >= lower) & (observed <= upper)
                rows.append(
                    {
                        "element": directory.name,
                        "method": method,
                        "calibrated_on": "+".join(pooling),
                        "scheme": scheme,
                        **summary["overall"],
                        "by_level": [float(inside[tercile == t].mean()) for t in range(3)],
                        "bins": [
                            (b["di_low"], b["di_high"], b["n_sites"], b["coverage"])
                            for b in summary["bins"]
                        ],
                    }
                )
    return rows


def summary_table(rows: list[dict[str, Any]], level: float) -> str:
    """Per method × calibration over every element and evaluated scheme: how many overall
    coverages and how many DI bins of ≥ 30 sites fall outside level ± 0.03, the bins' range
    and mean distance from the level, the same mean distance of the predicted-mean terciles'
    coverage, and the mean width relative to ``sd`` calibrated on both schemes."""
    frame = pd.DataFrame(rows)
    reference = frame[(frame["method"] == "sd") & (frame["calibrated_on"] == "grouped+spatial")]
    base = reference.set_index(["element", "scheme"])["mean_width"]
    lines = [
        "method           calibrated_on    outside(overall) outside(bins) bins        "
        "|bin-level| |tercile-level| width/sd"
    ]
    for (method, pooling), part in frame.groupby(["method", "calibrated_on"], sort=False):
        bins = [c for b in part["bins"] for _, _, n, c in b if n >= 30]
        outside = sum(abs(c - level) > 0.03 for c in bins)
        overall = int((abs(part["coverage"] - level) > 0.03).sum())
        relative = (part.set_index(["element", "scheme"])["mean_width"] / base).mean()
        lines.append(
            f"{method:16} {pooling:16} {overall:2}/{len(part):<14} {outside:2}/{len(bins):<11}"
            f"{min(bins):.3f}-{max(bins):.3f} {np.mean(np.abs(np.array(bins) - level)):.4f}"
            f"      {np.mean(np.abs(np.array(list(part['by_level'])) - level)):.4f}"
            f"          {relative:.3f}"
        )
    return "\n".join(lines)


def _edge(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def published_table(directory: Path) -> str:
    """The published interval's record of the model in ``directory``, one line per scheme."""
    record = load_model(directory).record["intervals"]
    lines = [
        f"{directory.name}: {record['method']} calibrated on "
        f"{'+'.join(record['calibrated_on'])}, DI edges "
        f"{', '.join(f'{e:.3f}' for e in record['di_edges']) or 'none'}"
    ]
    for scheme, summary in record["coverage"].items():
        overall = summary["overall"]
        bins = "  ".join(
            f"DI {b['di_low']:.2f}-{_edge(b['di_high'])}: {b['coverage']:.3f} "
            f"({b['n_sites']} sites, width {b['mean_width']:.4g})"
            for b in summary["bins"]
        )
        lines.append(
            f"  {scheme:8} {overall['coverage']:.3f} width {overall['mean_width']:.4g} "
            f"({overall['n_sites']} sites) | {bins}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path)
    parser.add_argument("--level", type=float, default=0.9)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--published", action="store_true")
    args = parser.parse_args()
    if args.published:
        for directory in sorted(p.parent for p in args.models.glob("*/model.json")):
            print(published_table(directory))
        return
    rows = []
    for directory in sorted(p.parent for p in args.models.glob("*/model.json")):
        for row in element_table(directory, args.level):
            rows.append(row)
            bins = "  ".join(f"{c:.3f}({n})" for _, _, n, c in row["bins"])
            levels = " ".join(f"{c:.2f}" for c in row["by_level"])
            print(
                f"{row['element']:3} {row['method']:16} {row['calibrated_on']:16} "
                f"{row['scheme']:8} cov {row['coverage']:.3f} width {row['mean_width']:10.3f} "
                f"| {levels} | {bins}",
                flush=True,
            )
    print(summary_table(rows, args.level))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
