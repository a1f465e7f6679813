"""The report's page and summary: ``report.html``, one self-contained HTML file with the
figures embedded, and ``report.json``, the report's numbers for run records and diffs."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tpgrid import __version__
from tpgrid.core.uncertainty import CALIBRATED_SD, TREE_QUANTILES
from tpgrid.fit import SCHEMES
from tpgrid.jsonable import plain
from tpgrid.report.analysis import (
    EFFECTS_SHOWN,
    ElementAnalysis,
    Factor,
    ReportContents,
    compared_factors,
)
from tpgrid.report.figures import number
from tpgrid.report.settings import APPLICABILITY_DIR
from tpgrid.synthetic.coverage import MapCoverage


def report_summary(contents: ReportContents) -> dict[str, Any]:
    """The report's numbers as JSON: what a run record links to and a reader can diff. No
    time of writing: a report is a function of its inputs (a published version's STAC item
    says when it was published), so equal inputs give equal bytes."""
    elements: dict[str, Any] = {}
    for analysis in contents.analyses:
        record = analysis.model.artifact.record
        elements[analysis.element] = {
            "model_hash": analysis.model.artifact.model_hash,
            "descriptive": contents.descriptive.loc[analysis.element].to_dict(),
            "cv": {s: record.get("cv", {}).get(s) for s in SCHEMES},
            "pineiro_line": {
                s: {"slope": a, "intercept": b} for s, (a, b) in analysis.lines.items()
            },
            "quality_warning": analysis.quality_warning,
            "effects": [pdp.variable for pdp, _ in analysis.effects],
            "coverage": analysis.coverage.reset_index().to_dict(orient="records"),
            "interval_k": analysis.k,
            "intervals": record.get("intervals"),
            "correlated_pairs": analysis.correlated.to_dict(orient="records"),
            "importance_incmse": analysis.importance["incmse"].to_dict(),
            "importance_by_group": analysis.by_group.to_dict(),
            "betasq_percent": analysis.betasq["percent"].to_dict(),
            "groups": {
                factor: {
                    "source": analysis.factors[factor].source,
                    "anova_p": result.p_value,
                    "letters": result.table["letters"].to_dict(),
                    "means": result.table["mean"].to_dict(),
                    "left_out": list(result.left_out),
                }
                for factor, result in analysis.comparisons.items()
            },
            "applicability": {
                "threshold": analysis.space.threshold,
                "n_training_sites": int(analysis.space.points.shape[0]),
                "share_inside": contents.shares.get(analysis.element),
            },
        }
    summary: dict[str, Any] = plain(
        {
            "format": "tpgrid-report/1",
            "tpgrid_version": __version__,
            **contents.sources,
            "prediction_run_id": contents.run_id,
            "level": contents.settings.level,
            "applicability": _applicability_source(contents),
            "truth_coverage": [row.to_json() for row in contents.truth_coverage],
            "elements": elements,
            "not_mapped": contents.not_mapped,
        }
    )
    return summary


def _quality_html(analyses: Sequence[ElementAnalysis]) -> str:
    """A warning naming each element whose model predicts held-out sites worse than their
    mean (grouped-CV R² below 0); empty when there is none."""
    flagged = [(a.element, a.quality_warning) for a in analyses if a.quality_warning]
    if not flagged:
        return ""
    items = "".join(
        f"<li><b>{html.escape(element)}</b>: {html.escape(str(warning))}</li>"
        for element, warning in flagged
    )
    return (
        "<div class='warning'><h2>Models worse than the mean</h2><p>These models predict the "
        "sites they did not see worse than the mean of those sites would; their maps are "
        "published, flagged, but say less than a constant map would. More sites or other "
        f"covariates may help.</p><ul>{items}</ul></div>"
    )


def _effects_note(contents: ReportContents) -> str:
    """Which predictors the PDP and ALE curves are drawn for, and why."""
    chosen = "; ".join(
        f"{a.element}: {', '.join(pdp.variable for pdp, _ in a.effects) or 'none'}"
        for a in contents.analyses
    )
    if contents.settings.effects is None:
        why = (
            f"each element's {EFFECTS_SHOWN} continuous predictors with the highest held-out "
            "%IncMSE (report.effects unset)"
        )
    else:
        why = "the predictors named in report.effects"
    return f"PDP and ALE curves are drawn for {why}: {html.escape(chosen)}."


def _groups_html(analyses: Sequence[ElementAnalysis]) -> str:
    """A letters table per factor compared, headed by its name and where it comes from."""
    factors: list[Factor] = compared_factors(analyses)
    if not factors:
        return (
            "<p>No comparison: the models have no categorical predictor and the site table "
            "no text column with 2–30 classes per site (or report.factors names none of "
            "them), or no factor has two classes with two sites each.</p>"
        )
    return "".join(
        f"<h3>{html.escape(factor.name)} <span class='note'>({html.escape(factor.source)})"
        "</span></h3>" + _table(_letters_table(analyses, factor.name))
        for factor in factors
    )


def _not_mapped_html(not_mapped: Mapping[str, str]) -> str:
    """A short section naming the elements without maps, and why; empty when there are none."""
    if not not_mapped:
        return ""
    items = "".join(
        f"<li><b>{html.escape(element)}</b>: {html.escape(reason)}</li>"
        for element, reason in not_mapped.items()
    )
    return f"<h2>Elements not mapped</h2><ul class='not-mapped'>{items}</ul>"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1180px; margin: 2em auto; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } img { max-width: 100%; display: block; margin: 0.8em 0; }
p.note, span.note { color: #555; font-size: 0.9em; font-weight: normal; }
div.warning { border: 2px solid #c0392b; background: #fdecea; padding: 0 1em; margin: 1em 0; }
div.warning h2 { border: none; color: #c0392b; margin-top: 0.6em; }
"""


def _interval_method(record: Mapping[str, Any]) -> str:
    """How the published interval is made, in words, from ``record["intervals"]``."""
    methods = {
        "quantile": "quantile-forest interval ± c",
        "quantile_scaled": "quantile-forest interval widened by c × its width",
        "sd": "mean ± k·sd",
    }
    method = methods.get(str(record.get("method")), str(record.get("method")))
    return f"{method}, calibrated on {' + '.join(record.get('calibrated_on', []))}"


def _img(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{encoded}">'


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(
        float_format=lambda v: number(v, digits), border=0, na_rep="–", escape=True
    )


def _letters_table(analyses: Sequence[ElementAnalysis], factor: str) -> pd.DataFrame:
    """Per element (rows) and class (columns): mean site value and Tukey letters."""
    rows: dict[str, dict[str, str]] = {}
    for analysis in analyses:
        result = analysis.comparisons.get(factor)
        if result is None:
            continue
        cells = {
            str(name): f"{number(row['mean'], 4)} {row['letters']} (n={int(row['n_sites'])})"
            for name, row in result.table.iterrows()
        }
        rows[analysis.element] = {"ANOVA p": f"{result.p_value:.2g}", **cells}
    return pd.DataFrame.from_dict(rows, orient="index")


def _block_edges(analyses: Sequence[ElementAnalysis]) -> str:
    """The spatial CV's block edges of the models (one, unless kept models differ), in km."""
    edges = {
        a.model.artifact.record.get("cv", {}).get("spatial", {}).get("block_km") for a in analyses
    }
    return " / ".join(sorted(f"{edge:g}" for edge in edges if edge is not None)) or "?"


def report_page(
    contents: ReportContents, figures: Mapping[str, Sequence[Path]], summary: Mapping[str, Any]
) -> str:
    analyses = contents.analyses
    level = f"{contents.settings.level:.0%}"

    def images(section: str) -> str:
        return "\n".join(_img(path) for path in figures[section])

    metrics = pd.DataFrame(
        {
            (a.element, scheme): {
                key: a.model.artifact.record.get("cv", {}).get(scheme, {}).get(key, math.nan)
                for key in ("r2", "rmse", "mae", "bias", "ccc")
            }
            | {"OLS slope": a.lines.get(scheme, (math.nan, math.nan))[0]}
            for a in analyses
            for scheme in SCHEMES
        }
    ).T
    coverage = pd.concat({a.element: a.coverage for a in analyses}).rename(
        columns={"mean_width": "mean width, mg/kg", "k": "k (× tree sd)"}
    )
    intervals = pd.concat({a.element: a.intervals for a in analyses})
    by_method: dict[str, list[str]] = {}
    for a in analyses:
        method = _interval_method(a.model.artifact.record.get("intervals", {}))
        by_method.setdefault(method, []).append(a.element)
    calibrated = "; ".join(f"{', '.join(els)}: {method}" for method, els in by_method.items())
    published = "; ".join(
        f"{a.element} "
        + " / ".join(
            f"{a.intervals.loc[(scheme, 'all'), 'coverage']:.0%} ({scheme})"
            for scheme in dict.fromkeys(a.intervals.index.get_level_values("scheme"))
        )
        for a in analyses
    )
    applicability = pd.DataFrame(
        {
            a.element: {
                "training sites": a.space.points.shape[0],
                "DI threshold": a.space.threshold,
                "share of pixels inside": contents.shares.get(a.element, math.nan),
            }
            for a in analyses
        }
    ).T
    correlated = pd.concat({a.element: a.correlated for a in analyses}).droplevel(1)
    closing = "; ".join(
        f"{a.element} {a.achieved(TREE_QUANTILES):.0%} (tree quantiles) → "
        f"{a.achieved(CALIBRATED_SD):.0%} (k = {a.k:.2f})"
        for a in analyses
    )
    sources = "<br>".join(
        f"{html.escape(name)} {html.escape(path)}" for name, path in contents.sources.items()
    )
    run = f"<br>prediction run {contents.run_id}" if contents.run_id else ""
    sections = [
        f"<h1>tpgrid science report</h1><p class='note'>{sources}{run}"
        f"<br>tpgrid {html.escape(summary['tpgrid_version'])}</p>"
        + _quality_html(analyses)
        + _not_mapped_html(contents.not_mapped),
        "<h2>1. Descriptive statistics</h2>"
        "<p class='note'>Samples measured and kept after screening (mean ± k SD); mean, SD, CV "
        "and median over site means of the kept samples, min/max over the samples, mg/kg as "
        "measured.</p>" + _table(contents.descriptive, 5) + images("descriptive"),
        "<h2>2. Group differences</h2><p class='note'>One-way ANOVA and Tukey HSD (α = 0.05) of "
        "site means, on the values the models were fitted to, by each categorical predictor "
        "(the class of the site's pixel) and each text column of the site table with 2–30 "
        "classes per site; classes sharing a letter do not differ; classes with fewer than "
        "two sites are not tested.</p>" + _groups_html(analyses) + images("groups"),
        "<h2>3. Drivers</h2><p class='note'>%IncMSE: growth of the held-out MSE when a "
        "predictor is shuffled, on forests refitted on the grouped CV folds. betasq: squared "
        "standardized OLS coefficients (aliased columns left out). PDP and ALE of the final "
        "forest over the training rows; ticks mark the training deciles. Strongly correlated "
        "predictors (below) split or swap credit in all three: read them together. "
        + _effects_note(contents)
        + "</p>"
        + (_table(correlated) if not correlated.empty else "")
        + images("drivers"),
        "<h2>4. Model checks</h2><p class='note'>Observed (y) against out-of-fold predicted (x), "
        "after Piñeiro et al. (2008); metrics of the fit's grouped (by site), random (by sample, "
        f"leaky, for comparison) and spatial (blocks of {_block_edges(analyses)} km) CV.</p>"
        + _table(metrics)
        + images("checks"),
        "<h2>5. Applicability</h2><p class='note'>Dissimilarity index (Meyer &amp; Pebesma 2021) "
        "with importance-weighted standardized predictors; the area of applicability holds "
        "pixels whose DI does not exceed the upper whisker of the training sites' "
        "cross-validated DI.</p>"
        + (
            _table(applicability) + images("applicability")
            if figures["applicability"]
            else "<p>Not computed.</p>"
        ),
        f"<h2>6. Uncertainty</h2><p class='note'>{level} intervals on held-out sites (grouped CV "
        "forests): the trees' quantiles, mean ± z·sd, and mean ± k·sd with k calibrated on the "
        "other folds (cross-conformal). The spread between trees is how much the forests "
        "disagree about the mean, not how far a new site may fall from it.</p>"
        + _table(coverage)
        + f"<h3>The published {level} interval, by applicability</h3><p class='note'>The "
        "interval the maps publish, calibrated per DI bin (conformal) on the held-out sites "
        "of the schemes named, and its coverage on held-out sites of the grouped and spatial "
        "CV per DI bin (DI of the site against the training sites of the forest that "
        "predicted it); each fold's sites covered by a calibration made without them "
        f"(cross-conformal). {html.escape(calibrated)}.</p>"
        + _table(intervals)
        + images("uncertainty")
        + _truth_html(contents.truth_coverage)
        + (
            "<h3>Maps</h3><p class='note'>Mean, and the width of the published interval "
            f"(upper − lower; light: narrow), of prediction run {contents.run_id}; grey: "
            "outside the area of applicability; white: no data (outside the mask, or a "
            "covariate missing).</p>" + images("maps")
            if figures["maps"]
            else ""
        ),
        f"<h2>Closing note</h2><p>Coverage of the {level} interval on held-out sites: "
        f"{html.escape(closing)}; inter-tree variance alone does not hold the stated rate on "
        "sites the models had not seen. The interval the maps publish (`lower`, `upper`), "
        f"calibrated per DI bin: {html.escape(published)}.</p>",
    ]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>tpgrid report</title><style>{_STYLE}</style></head><body>{body}</body></html>\n"
    )


def _applicability_source(contents: ReportContents) -> str | None:
    """Where the report's DI and AOA maps are: its own group, the prediction's, or none."""
    if contents.applicability is None:
        return None
    if contents.applicability == contents.sources.get("prediction"):
        return "prediction"
    return APPLICABILITY_DIR


def _truth_html(rows: Sequence[MapCoverage]) -> str:
    """The published interval over the whole map against the synthetic truth, if measured."""
    if not rows:
        return ""
    table = pd.DataFrame(
        {
            (row.element, "all" if row.bin is None else f"{row.di_low:.2f}–{row.di_high:.2f}"): {
                "pixels": row.pixels,
                "a new sample inside": row.sample_coverage,
                "the noise-free truth inside": row.truth_coverage,
                "mean width, mg/kg": row.mean_width,
            }
            for row in rows
        }
    ).T.rename_axis(["element", "DI"])
    return (
        f"<h3>Over the map, against the synthetic truth</h3><p class='note'>Every valid pixel "
        f"of the published {rows[0].nominal:.0%} interval, against one new sample simulated "
        "there as the site table's samples were measured (truth × site effect × sample noise, "
        "ICP-MS, XRF, on the model's scale) and against the noise-free truth, overall and per "
        "DI bin of the calibration: the interval holds over the map, not only at the sites it "
        "was calibrated on, when the first column is near the nominal level.</p>" + _table(table)
    )
