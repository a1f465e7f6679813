"""What a report computes, as data: per element the held-out importance, effects, interval
coverage, training space and group comparisons; for the whole report the descriptive table and
the :class:`ReportContents` that the figures, the summary and the page are made from.

Importance, coverage and the AOA's cross-validated DI come from the forests of the fit's
*grouped* CV (``fold_grouped``): its fold tasks stored every tree's prediction of the rows they
held out and permutation importance's squared errors (``ElementModel.held_out``), so every
number about held-out sites comes from forests that never saw them, and nothing is refitted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr

from tpgrid.core.applicability import TrainingSpace, column_weights, training_space
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
from tpgrid.errors import AnalysisError
from tpgrid.fit import SCHEMES, SiteSource, read_sites
from tpgrid.report.inputs import ElementModel
from tpgrid.report.settings import ReportSettings
from tpgrid.tasks import Progress, task_runner

log = logging.getLogger(__name__)

#: Categorical predictors the group comparisons are made for, when the models have them.
FACTORS = ("vegetation", "lithology")


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
    lines: dict[str, tuple[float, float]]
    correlated: pd.DataFrame
    comparisons: dict[str, GroupComparison] = field(default_factory=dict)

    @property
    def element(self) -> str:
        return self.model.element

    def achieved(self, method: str) -> float:
        """Achieved coverage of one interval method on held-out samples (0–1)."""
        shares = self.coverage["achieved"].to_numpy(dtype=np.float64)
        return float(shares[list(self.coverage.index).index(method)])


def analyse_element(
    model: ElementModel, groups: Mapping[str, str], settings: ReportSettings
) -> ElementAnalysis:
    """Importance, betasq, effects, coverage, training space and group comparisons of one
    element, held-out parts from the fit's grouped CV. ``groups`` maps cube variables to
    predictor groups (the cube's ``tpgrid:group`` attributes)."""
    features = model.artifact.features
    X, y = model.X, model.y
    held = model.held_out
    importance = importance_table(
        float(held.importance_base_sse.sum()),
        held.importance_sse.sum(axis=0),
        features.column_variables,
    )
    coverage, k = coverage_table(y, HeldOutTrees(model.folds, held.trees), settings.level)
    incmse = {str(name): float(value) for name, value in importance["incmse"].items()}
    weights = column_weights(incmse, features.column_variables)
    space = training_space(X, model.training["site_id"], model.folds, weights, features)
    predict = _mean_of(model.artifact.forest)
    effects = tuple(
        (
            partial_dependence(predict, X, features.columns.index(name), name, seed=settings.seed),
            accumulated_local_effects(predict, X, features.columns.index(name), name),
        )
        for name in settings.effects
        if name in features.continuous
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
        lines=lines,
        correlated=correlated_pairs(X[:, : len(features.continuous)], features.continuous),
        comparisons=_comparisons(model),
    )


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


def _comparisons(model: ElementModel) -> dict[str, GroupComparison]:
    """ANOVA + Tukey of the element's site means by each factor the model has; factors whose
    data cannot support a comparison (fewer than two classes of two sites) are left out."""
    found: dict[str, GroupComparison] = {}
    for feature in model.artifact.features.categorical:
        if feature.variable not in FACTORS:
            continue
        try:
            found[feature.variable] = compare_groups(
                site_values(model), site_classes(model, feature), feature.variable
            )
        except AnalysisError as exc:
            log.info("%s by %s: %s", model.element, feature.variable, exc)
    return found


# --- the whole report ------------------------------------------------------------------------


def analyse_elements(
    loaded: Sequence[ElementModel],
    groups: Mapping[str, str],
    settings: ReportSettings,
    progress: Progress | None = None,
) -> list[ElementAnalysis]:
    """:func:`analyse_element` of every element, in the order given: one task per element on
    the current Dask client (its workers are otherwise idle while a report is written), or one
    after another in this process when there is no client."""
    with task_runner(local_threads=1) as runner:
        # Each model (its forest is MiBs) goes to a worker once, outside the task graph.
        shared = runner.share(*loaded)
        futures = [runner.submit(analyse_element, model, groups, settings) for model in shared]
        report = (lambda done, total: progress("analyses", done, total)) if progress else None
        analyses = runner.gather(futures, report)
    # The client's own models, not the copies that came back from the workers.
    return [replace(a, model=model) for a, model in zip(analyses, loaded, strict=True)]


def descriptive_statistics(
    sites: SiteSource | str | Path, loaded: Sequence[ElementModel]
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The paper's table from the site table and each model's screening record, and the kept
    samples (``site_id``, ``value``) per element. Values as measured (XRF): where the fit
    calibrated an element, the models saw calibrated values, the table does not."""
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
    return descriptive_table(measured, kept), kept


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
