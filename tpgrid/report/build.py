"""Writing a report: every element analysed, the applicability layers read from the prediction
(or computed when it has none), the figures, the summary and the page written into a staging
directory and swapped in complete."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpgrid.aoa import ElementApplicability, aoa_share, applicability_cube
from tpgrid.cube import open_cube
from tpgrid.errors import OutputExistsError
from tpgrid.fit import SiteSource
from tpgrid.outputs import variable_name
from tpgrid.report.analysis import (
    ReportContents,
    analyse_elements,
    check_settings,
    descriptive_statistics,
    site_factors,
)
from tpgrid.report.figure_data import SECTIONS, figure_plans
from tpgrid.report.inputs import find_elements, load_element, open_matching_prediction
from tpgrid.report.page import report_page, report_summary
from tpgrid.report.render import previous_figures, render_figures, write_keys
from tpgrid.report.settings import (
    APPLICABILITY_DIR,
    FIGURES_DIR,
    REPORT_FILE,
    SUMMARY_FILE,
    ReportSettings,
)
from tpgrid.store import staging_path, swap_in
from tpgrid.synthetic import PlateauFiles
from tpgrid.synthetic.coverage import MapCoverage, map_coverage
from tpgrid.tasks import Progress


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and its summary (also written as ``report.json``)."""

    directory: Path
    html: Path
    figures: tuple[Path, ...]
    summary: dict[str, Any]
    reused: tuple[str, ...] = ()  # figures linked from the previous report, by file name


def write_report(
    models: str | Path,
    out: str | Path,
    *,
    cube: str | Path | None = None,
    sites: SiteSource | str | Path | None = None,
    prediction: str | Path | None = None,
    settings: ReportSettings | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    not_mapped: Mapping[str, str] | None = None,
    previous: str | Path | None = None,
    truth: PlateauFiles | None = None,
) -> ReportResult:
    """Analyse every element model under ``models`` and write the report directory ``out``:
    ``report.html`` (figures embedded), ``figures/*.png``, ``report.json`` and, with
    ``settings.applicability``, the DI and AOA maps: read from ``prediction`` when it has them,
    else computed on the current Dask client into ``applicability.zarr``.

    ``cube`` and ``sites`` default to those recorded by the fit (the site table with its CRS and
    coordinate columns; a bare ``sites`` path is a lon/lat table). ``settings.effects`` or
    ``settings.factors`` naming something the models and the site table do not have is a
    :class:`~tpgrid.errors.ConfigError`, raised before anything is computed. With ``prediction`` (a
    ``tpgrid predict`` output made with these models), the report maps each element's mean and
    the half-width of its calibrated interval, and records the run's id. ``out`` is replaced
    only when ``overwrite``. ``progress(stage, done, total)`` is called as elements finish.
    ``not_mapped`` (element → reason) lists elements without a model, e.g. too few sites.
    ``previous`` is an earlier report (with the ``SHA256SUMS`` publishing wrote into it): its
    figures drawn from the same data are linked rather than drawn again, once checked against
    that manifest (:mod:`tpgrid.report.render`); the report is the same either way.
    ``truth`` (the synthetic plateau the inputs came from) adds, with ``prediction``, the
    published interval's coverage over the whole map against the plateau's truth.
    """
    settings = settings or ReportSettings()
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists: choose another directory or pass --overwrite")
    loaded = [load_element(path) for path in find_elements(models)]
    first = loaded[0].artifact.record
    cube_path = Path(cube or first["cube"]["path"])
    site_source = SiteSource.from_record(first["sites"]) if sites is None else sites
    dataset = open_cube(cube_path)
    maps, run_id = (
        (None, None) if prediction is None else open_matching_prediction(prediction, loaded)
    )
    groups = {
        str(name): str(dataset[name].attrs.get("tpgrid:group", "other"))
        for name in dataset.data_vars
    }
    descriptive, kept, frame = descriptive_statistics(site_source, loaded)
    sites_path = site_source.path if isinstance(site_source, SiteSource) else Path(site_source)
    factors = site_factors(frame)
    check_settings(loaded, factors, settings)
    analyses = analyse_elements(loaded, groups, settings, progress, factors)
    sources = {"models": models, "cube": cube_path, "sites": sites_path, "prediction": prediction}

    staging = staging_path(out)
    staging.mkdir(parents=True)
    try:
        shares: dict[str, float] = {}
        applicability: Path | None = None
        elements = [a.element for a in analyses]
        if settings.applicability and prediction is not None and _has_layers(prediction, elements):
            applicability = Path(prediction)  # the prediction made them with the same spaces
            shares = {element: aoa_share(applicability, element) for element in elements}
        elif settings.applicability:
            applicability = staging / APPLICABILITY_DIR
            shares = applicability_cube(
                cube_path,
                [ElementApplicability(a.model.artifact, a.space) for a in analyses],
                applicability,
                progress=progress,
            )
        truth_coverage: tuple[MapCoverage, ...] = ()
        if truth is not None and prediction is not None:
            calibrations = {a.element: a.model.artifact.record.get("calibration") for a in analyses}
            truth_coverage = tuple(map_coverage(Path(prediction), truth, calibrations))
        contents = ReportContents(
            analyses=tuple(analyses),
            descriptive=descriptive,
            kept=kept,
            shares=shares,
            settings=settings,
            sources={k: str(Path(v).resolve()) for k, v in sources.items() if v is not None},
            prediction=maps,
            run_id=run_id,
            not_mapped=dict(not_mapped or {}),
            applicability=None if applicability is None else str(applicability.resolve()),
            truth_coverage=truth_coverage,
        )
        figures_dir = staging / FIGURES_DIR
        figures_dir.mkdir()
        plans = figure_plans(contents, applicability)
        reusable = previous_figures(None if previous is None else Path(previous))
        rendered = render_figures(plans, figures_dir, reusable, progress)
        write_keys(staging, rendered)
        figures: dict[str, list[Path]] = {section: [] for section in SECTIONS}
        for plan, item in zip(plans, rendered, strict=True):
            figures[plan.section].append(item.path)
        summary = report_summary(contents)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        (staging / REPORT_FILE).write_text(
            report_page(contents, figures, summary), encoding="utf-8"
        )
        swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ReportResult(
        directory=out,
        html=out / REPORT_FILE,
        figures=tuple(
            out / FIGURES_DIR / path.name for section in figures.values() for path in section
        ),
        summary=summary,
        reused=tuple(item.path.name for item in rendered if item.reused),
    )


def _has_layers(prediction: str | Path, elements: list[str]) -> bool:
    """Whether the prediction group holds the DI and AOA layers of every element."""
    return all(
        (Path(prediction) / variable_name(element, layer)).is_dir()
        for element in elements
        for layer in ("di", "aoa")
    )
