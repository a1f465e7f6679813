"""What a report computes, as data: per element the held-out importance, effects, interval
coverage, training space and group comparisons; for the whole report the descriptive table and
the :class:`ReportContents` that the figures, the summary and the page are made from.

Nothing here assumes a region or its layers. The effects drawn are each element's most
important continuous predictors unless ``report.effects`` names them; site means are compared
by every categorical predictor (its class at each site's pixel, named by the layer's class
table) and every categorical column of the site table (:func:`site_factors`) unless
``report.factors`` names some. A name that is neither is a :class:`ConfigError` before anything
is computed (:func:`check_settings`).

Importance and coverage come from the forests of the fit's *grouped* CV (``fold_grouped``):
its fold tasks stored every tree's prediction of the rows they held out and permutation
importance's squared errors (``ElementModel.held_out``), so every number about held-out sites
comes from forests that never saw them, and nothing is refitted. The training space (DI, AOA)
and the calibrated interval's coverage per CV scheme and DI bin are the model's own, made once
by the fit (``artifact.space``, ``record["intervals"]``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr

from tpgrid.core.applicability import TrainingSpace
from tpgrid.core.explain import (
    EffectCurve,
    accumulated_local_effects,
    betasq,
    correlated_pairs,
    group_importance,
    importance_table,
    partial_dependence,
)
from tpgrid.core.features import CategoricalFeature
from tpgrid.core.forest import PackedForest
from tpgrid.core.metrics import pineiro_line
from tpgrid.core.stats import GroupComparison, compare_groups, descriptive_table, site_means
from tpgrid.core.uncertainty import HeldOutTrees, coverage_table
from tpgrid.errors import AnalysisError, ArtifactError, ConfigError
from tpgrid.fit import SCHEMES, SiteSource, read_sites
from tpgrid.outputs import quality_warning
from tpgrid.report.inputs import ElementModel
from tpgrid.report.settings import ReportSettings
from tpgrid.synthetic.coverage import MapCoverage
from tpgrid.tasks import Progress, task_runner

log = logging.getLogger(__name__)

#: PDP and ALE are drawn for this many of an element's continuous predictors, the most
#: important first, unless ``report.effects`` names them.
EFFECTS_SHOWN = 5
#: A site-table column is a factor when it holds text with this many classes (at most) over
#: the sites; more are names or notes, not groups to compare.
FACTOR_LEVELS = (2, 30)
#: Site-table columns that are never factors: identifiers and coordinates.
_NOT_FACTORS = frozenset({"site_id", "sample_id", "lon", "lat", "x", "y"})
#: Where a factor's classes come from.
CUBE_LAYER = "categorical predictor (class at the site's pixel)"
SITE_COLUMN = "site-table column"


@dataclass(frozen=True, eq=False)
class Factor:
    """A factor site means are compared by for one element: its class at each training site
    (``classes``, by site id, class names), the classes in display order, and where it comes
    from (:data:`CUBE_LAYER` or :data:`SITE_COLUMN`)."""

    name: str
    source: str
    classes: pd.Series[str]
    order: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class ElementAnalysis:
    """Everything the report shows about one element's model."""

    model: ElementModel
    importance: pd.DataFrame
    by_group: pd.Series[float]
    betasq: pd.DataFrame
    effects: tuple[tuple[EffectCurve, EffectCurve], ...]
    coverage: pd.DataFrame
    k: float
    space: TrainingSpace
    intervals: pd.DataFrame  # the calibrated interval per CV scheme × DI bin
    lines: dict[str, tuple[float, float]]
    correlated: pd.DataFrame
    comparisons: dict[str, GroupComparison] = field(default_factory=dict)
    factors: dict[str, Factor] = field(default_factory=dict)  # those compared, by name

    @property
    def element(self) -> str:
        return self.model.element

    @property
    def grouped_r2(self) -> float | None:
        """The grouped-CV R² the fit recorded, None where it recorded none."""
        r2 = self.model.artifact.record.get("cv", {}).get("grouped", {}).get("r2")
        return None if r2 is None else float(r2)

    @property
    def quality_warning(self) -> str | None:
        """The warning the model's maps carry (grouped-CV R² below 0), None for a usable one."""
        return quality_warning(self.grouped_r2)

    def achieved(self, method: str) -> float:
        """Achieved coverage of one interval method on held-out samples (0–1)."""
        shares = self.coverage["achieved"].to_numpy(dtype=np.float64)
        return float(shares[list(self.coverage.index).index(method)])


def analyse_element(
    model: ElementModel,
    groups: Mapping[str, str],
    settings: ReportSettings,
    sites: pd.DataFrame | None = None,
) -> ElementAnalysis:
    """Importance, betasq, effects, coverage, training space and group comparisons of one
    element, held-out parts from the fit's grouped CV. ``groups`` maps cube variables to
    predictor groups (the cube's ``tpgrid:group`` attributes); ``sites`` holds the site
    table's factors (:func:`site_factors`), if any."""
    features = model.artifact.features
    X, y = model.X, model.y
    held = model.held_out
    importance = importance_table(
        float(held.importance_base_sse.sum()),
        held.importance_sse.sum(axis=0),
        features.column_variables,
    )
    coverage, k = coverage_table(y, HeldOutTrees(model.folds, held.trees), settings.level)
    space = model.artifact.space
    if space is None or model.artifact.calibration is None:
        raise ArtifactError(
            f"{model.directory}: the model has no training space or interval calibration (an "
            "older fit): fit it again with `tpgrid fit`"
        )
    predict = _mean_of(model.artifact.forest)
    comparisons, factors = _comparisons(model, sites, settings.factors)
    effects = tuple(
        (
            partial_dependence(predict, X, features.columns.index(name), name, seed=settings.seed),
            accumulated_local_effects(predict, X, features.columns.index(name), name),
        )
        for name in chosen_effects(model, importance, settings)
    )
    lines = {
        scheme: pineiro_line(y, model.cv[f"predicted_{scheme}"])
        for scheme in SCHEMES
        if model.cv[f"predicted_{scheme}"].notna().sum() >= 3
    }
    return ElementAnalysis(
        model=model,
        importance=importance,
        by_group=group_importance(importance["incmse"], groups),
        betasq=betasq(X, y, features.columns, features.column_variables),
        effects=effects,
        coverage=coverage,
        k=k,
        space=space,
        intervals=interval_table(model.artifact.record.get("intervals", {})),
        lines=lines,
        correlated=correlated_pairs(X[:, : len(features.continuous)], features.continuous),
        comparisons=comparisons,
        factors=factors,
    )


def interval_table(record: Mapping[str, Any]) -> pd.DataFrame:
    """The calibrated interval's cross-conformal coverage from the model's
    ``record["intervals"]``: one row per CV scheme × DI bin (``all`` first), with the bin's DI
    range, sites, rows, coverage and mean width."""
    rows = []
    for scheme, summary in record.get("coverage", {}).items():
        for label, part in [("all", summary["overall"]), *_bin_labels(summary["bins"])]:
            rows.append(
                {
                    "scheme": scheme,
                    "DI": label,
                    "sites": part["n_sites"],
                    "samples": part["n_rows"],
                    "coverage": part["coverage"],
                    "mean width, mg/kg": part["mean_width"],
                }
            )
    columns = ["scheme", "DI", "sites", "samples", "coverage", "mean width, mg/kg"]
    return pd.DataFrame(rows, columns=columns).set_index(["scheme", "DI"])


def _bin_labels(bins: Sequence[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    def label(part: Mapping[str, Any]) -> str:
        high = part["di_high"]
        return f"{part['di_low']:.3g}–{high:.3g}" if high is not None else f"> {part['di_low']:.3g}"

    return [(label(part), part) for part in bins]


def chosen_effects(
    model: ElementModel, importance: pd.DataFrame, settings: ReportSettings
) -> tuple[str, ...]:
    """The predictors whose PDP and ALE are drawn: ``report.effects`` as given (checked by
    :func:`check_settings`), or else the model's :data:`EFFECTS_SHOWN` continuous predictors
    that vary over the training rows, by decreasing held-out %IncMSE."""
    if settings.effects is not None:
        return settings.effects
    continuous = model.artifact.features.continuous
    X = model.X
    varies = {name for j, name in enumerate(continuous) if np.ptp(X[:, j]) > 0}
    ranked = [str(name) for name in importance.index if name in varies]
    return tuple(ranked[:EFFECTS_SHOWN])


def _mean_of(forest: PackedForest) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float64]]:
    def predict(X: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        mean: npt.NDArray[np.float64] = forest.predict_mean_variance(X)[0]
        return mean

    return predict


def site_classes(model: ElementModel, feature: CategoricalFeature) -> pd.Series[str]:
    """The class of every training site, from its indicator columns (the cube's class at the
    site's pixel, which is what the model saw)."""
    indicators = model.training[list(feature.columns)].to_numpy()
    names = np.asarray(feature.names)[indicators.argmax(axis=1)]
    per_row = pd.Series(names, index=model.training["site_id"].to_numpy())
    classes: pd.Series[str] = per_row.groupby(level=0).first()
    return classes


def site_values(model: ElementModel) -> pd.Series[float]:
    """Each training site's mean of the values the model was fitted to."""
    samples = pd.DataFrame({"site_id": model.training["site_id"], "value": model.y})
    return site_means(samples)


def _comparisons(
    model: ElementModel, sites: pd.DataFrame | None, wanted: Sequence[str] | None
) -> tuple[dict[str, GroupComparison], dict[str, Factor]]:
    """ANOVA + Tukey of the element's site means by each factor (``wanted``, or all): its
    categorical predictors, then the site table's factors it does not have as a predictor
    (the class at the site's pixel is what the model saw). Factors whose data cannot support
    a comparison (fewer than two classes of two sites) are left out. Returns the comparisons
    and the factors compared, by name."""
    found: dict[str, Factor] = {}
    for feature in model.artifact.features.categorical:
        classes = site_classes(model, feature)
        found[feature.variable] = Factor(feature.variable, CUBE_LAYER, classes, feature.names)
    if sites is not None:
        trained = pd.Index(model.training["site_id"].unique())
        for name in sites.columns:
            if name not in found:
                classes = sites[name].reindex(trained).dropna().astype(str)
                order = tuple(sorted(set(classes)))
                found[name] = Factor(str(name), SITE_COLUMN, classes, order)
    values = site_values(model)
    comparisons: dict[str, GroupComparison] = {}
    factors: dict[str, Factor] = {}
    for name, factor in found.items():
        if wanted is not None and name not in wanted:
            continue
        try:
            comparisons[name] = compare_groups(values, factor.classes, name)
        except AnalysisError as exc:
            log.info("%s by %s: %s", model.element, name, exc)
            continue
        factors[name] = factor
    return comparisons, factors


def site_factors(frame: pd.DataFrame) -> pd.DataFrame:
    """The site table's factors, one row per site (indexed by ``site_id``): its text columns
    other than identifiers and coordinates with 2–30 classes over the sites
    (:data:`FACTOR_LEVELS`). A column whose value differs between samples of one site
    describes samples, not sites, and is left out (site means are compared); a blank cell is
    no class."""
    found: dict[str, pd.Series[str]] = {}
    low, high = FACTOR_LEVELS
    for name in frame.columns:
        column = frame[name]
        text = pd.api.types.is_string_dtype(column) or isinstance(column.dtype, pd.CategoricalDtype)
        if name in _NOT_FACTORS or not text:
            continue
        stripped = column.astype("string").str.strip()
        values = stripped.where(stripped != "")
        by_site = values.groupby(frame["site_id"], sort=True)
        if int(by_site.nunique(dropna=True).max()) > 1:
            log.info("site-table column %s differs within sites: not a factor", name)
            continue
        per_site = by_site.first()
        if low <= per_site.nunique(dropna=True) <= high:
            found[str(name)] = per_site.astype(object)
    return pd.DataFrame(found, index=pd.Index(sorted(frame["site_id"].unique()), name="site_id"))


def check_settings(
    loaded: Sequence[ElementModel], sites: pd.DataFrame | None, settings: ReportSettings
) -> None:
    """:class:`ConfigError` for an effect in ``report.effects`` that is not a continuous
    predictor of every model, or a factor in ``report.factors`` that is neither a categorical
    predictor of a model nor a factor of the site table (``sites``): named with what there is,
    before anything is computed."""
    for model in loaded:
        features = model.artifact.features
        missing = [name for name in settings.effects or () if name not in features.continuous]
        if missing:
            categorical = [c.variable for c in features.categorical if c.variable in missing]
            aside = (
                f" ({', '.join(categorical)}: categorical, compared by class instead)"
                if categorical
                else ""
            )
            raise ConfigError(
                f"report.effects names {missing}, which the {model.element} model does not "
                f"have as continuous predictors{aside}; its continuous predictors are "
                f"{list(features.continuous)}: set report.effects in the pipeline YAML (or "
                "--effect) to some of them, or leave it unset to draw each element's "
                f"{EFFECTS_SHOWN} most important"
            )
    available = list(
        dict.fromkeys(
            [c.variable for m in loaded for c in m.artifact.features.categorical]
            + ([str(name) for name in sites.columns] if sites is not None else [])
        )
    )
    unknown = [name for name in settings.factors or () if name not in available]
    if unknown:
        raise ConfigError(
            f"report.factors names {unknown}, which are neither categorical predictors of the "
            f"models nor text columns of the site table with {FACTOR_LEVELS[0]}-"
            f"{FACTOR_LEVELS[1]} classes per site; there are {available}: set report.factors "
            "in the pipeline YAML to some of them, or leave it unset to compare by all"
        )


def compared_factors(analyses: Sequence[ElementAnalysis]) -> list[Factor]:
    """Every factor some element was compared by, once, in the order first met (the first
    element's :class:`Factor` standing for its name and source)."""
    found: dict[str, Factor] = {}
    for analysis in analyses:
        for name, factor in analysis.factors.items():
            found.setdefault(name, factor)
    return list(found.values())


# --- the whole report ------------------------------------------------------------------------


def analyse_elements(
    loaded: Sequence[ElementModel],
    groups: Mapping[str, str],
    settings: ReportSettings,
    progress: Progress | None = None,
    sites: pd.DataFrame | None = None,
) -> list[ElementAnalysis]:
    """:func:`analyse_element` of every element, in the order given: one task per element on
    the current Dask client (its workers are otherwise idle while a report is written), or one
    after another in this process when there is no client."""
    with task_runner(local_threads=1) as runner:
        # Each model (its forest is MiBs) goes to a worker once, outside the task graph.
        shared = runner.share(*loaded)
        futures = [
            runner.submit(analyse_element, model, groups, settings, sites) for model in shared
        ]
        report = (lambda done, total: progress("analyses", done, total)) if progress else None
        analyses = runner.gather(futures, report)
    # The client's own models, not the copies that came back from the workers.
    return [replace(a, model=model) for a, model in zip(analyses, loaded, strict=True)]


def descriptive_statistics(
    sites: SiteSource | str | Path, loaded: Sequence[ElementModel]
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], pd.DataFrame]:
    """The paper's table from the site table and each model's screening record, the kept
    samples (``site_id``, ``value``) per element, and the site table as read (for its
    :func:`site_factors`). Values as measured (XRF): where the fit calibrated an element, the
    models saw calibrated values, the table does not."""
    elements = [m.element for m in loaded]
    frame = read_sites(sites, elements).frame
    measured: dict[str, pd.DataFrame] = {}
    kept: dict[str, pd.DataFrame] = {}
    for model in loaded:
        element = model.element
        rows = frame.dropna(subset=[element])
        measured[element] = pd.DataFrame({"site_id": rows["site_id"], "value": rows[element]})
        removed = set((model.artifact.record.get("screening") or {}).get("removed", {}))
        kept[element] = measured[element][~rows["sample_id"].isin(removed)]
    return descriptive_table(measured, kept), kept, frame


@dataclass(frozen=True, eq=False)
class ReportContents:
    """What the figures, the summary and the page are made from. ``sources`` holds the
    resolved paths of the inputs (models, cube, sites and, if given, prediction)."""

    analyses: tuple[ElementAnalysis, ...]
    descriptive: pd.DataFrame
    kept: dict[str, pd.DataFrame]
    shares: dict[str, float]
    settings: ReportSettings
    sources: dict[str, str]
    prediction: xr.Dataset | None = None
    run_id: str | None = None
    not_mapped: dict[str, str] = field(default_factory=dict)  # element → why
    #: Where the DI and AOA layers were read from: the report's own applicability group, or
    #: the prediction's layers (None: not computed).
    applicability: str | None = None
    #: The published interval over the map against the synthetic truth (synthetic inputs only).
    truth_coverage: tuple[MapCoverage, ...] = ()
