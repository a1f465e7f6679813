"""The science report of a set of models: the paper's analyses, applicability and calibrated
uncertainty, as one self-contained HTML file with its figures beside it as PNG.

Input is what ``tpgrid fit`` wrote (one directory per element: artifact, scikit-learn trees,
``training.parquet``, ``cv_predictions.parquet``), the site table and the cube the models were
fitted on. Per element it

1. describes the measured values before and after screening (the paper's table, histograms);
2. compares site means across vegetation types and lithologies (ANOVA, Tukey HSD letters);
3. ranks the predictors (held-out %IncMSE per predictor and per group, betasq) and draws PDP
   and ALE curves of the chosen ones;
4. plots observed against out-of-fold predicted values (Piñeiro: observed on y) with the
   grouped, random and spatial CV metrics of the fit;
5. computes the dissimilarity index and area of applicability over the cube on the current
   Dask client (:mod:`tpgrid.aoa`) into ``applicability.zarr``;
6. measures the coverage of 90 % intervals from the tree distribution on held-out sites, and
   calibrates ``k`` of ``mean ± k·sd`` (:mod:`tpgrid.core.uncertainty`).

Importance, coverage and the AOA's cross-validated DI use forests refitted on the *grouped*
folds of the fit (``fold_grouped``), so every number about held-out sites comes from forests
that never saw them. Everything is written into a staging directory and swapped in complete.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr
import zarr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tpgrid import __version__
from tpgrid.aoa import ElementApplicability, applicability_cube, layer_name
from tpgrid.artifact import MODEL_FILE, ModelArtifact, load_estimator, load_model
from tpgrid.core.applicability import TrainingSpace, column_weights, training_space
from tpgrid.core.blocks import AOA_NODATA
from tpgrid.core.explain import (
    DEFAULT_EFFECTS,
    EffectCurve,
    HeldOut,
    accumulated_local_effects,
    betasq,
    correlated_pairs,
    group_importance,
    partial_dependence,
    permutation_importance,
)
from tpgrid.core.features import CategoricalFeature
from tpgrid.core.forest import PackedForest
from tpgrid.core.metrics import pineiro_line
from tpgrid.core.stats import (
    GroupComparison,
    compare_groups,
    descriptive_table,
    site_means,
)
from tpgrid.core.uncertainty import (
    CALIBRATED_SD,
    LEVEL,
    TREE_QUANTILES,
    coverage_table,
    cross_fit,
)
from tpgrid.cube import open_cube
from tpgrid.errors import AnalysisError, ArtifactError, OutputExistsError
from tpgrid.fit import CV_PREDICTIONS_FILE, SCHEMES, TRAINING_FILE, read_sites
from tpgrid.outputs import open_prediction, variable_name
from tpgrid.store import staging_path, swap_in
from tpgrid.tasks import Progress, task_runner

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
SUMMARY_FILE = "report.json"
FIGURES_DIR = "figures"
APPLICABILITY_DIR = "applicability.zarr"
#: Categorical predictors the group comparisons are made for, when the models have them.
FACTORS = ("vegetation", "lithology")
#: Longest side of a map figure, in pixels of the grid (larger grids are strided).
MAP_PX = 900
DPI = 110


@dataclass(frozen=True)
class ReportSettings:
    """What the report computes: PDP/ALE predictors (cube variable names), the interval level,
    trees per refitted CV forest (None: as many as the final forest), shuffles per predictor
    for %IncMSE, the seed of the shuffles and whether to compute the AOA over the cube."""

    effects: tuple[str, ...] = DEFAULT_EFFECTS
    level: float = LEVEL
    cv_trees: int | None = None
    importance_repeats: int = 3
    seed: int = 0
    applicability: bool = True


# --- one element's model, as fit left it --------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ElementModel:
    """An element's artifact, its scikit-learn estimator, its training table (one row per
    training sample: ``site_id``, the feature columns, ``observed`` in mg/kg) and its
    out-of-fold predictions of the fit's CV schemes, row for row."""

    directory: Path
    artifact: ModelArtifact
    estimator: Any
    training: pd.DataFrame
    cv: pd.DataFrame

    @property
    def element(self) -> str:
        return self.artifact.element

    @property
    def X(self) -> npt.NDArray[np.float32]:
        columns = list(self.artifact.features.columns)
        return self.training[columns].to_numpy(dtype=np.float32)

    @property
    def y(self) -> npt.NDArray[np.float64]:
        return self.training["observed"].to_numpy(dtype=np.float64)

    @property
    def folds(self) -> npt.NDArray[np.intp]:
        return self.cv["fold_grouped"].to_numpy(dtype=np.intp)


def load_element(directory: str | Path) -> ElementModel:
    """Read one element directory written by ``tpgrid fit``; :class:`ArtifactError` if a part
    is missing or the training table and CV predictions do not match row for row."""
    directory = Path(directory)
    artifact = load_model(directory)
    estimator = load_estimator(directory)
    tables = []
    for name in (TRAINING_FILE, CV_PREDICTIONS_FILE):
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: fit the model again with `tpgrid fit`")
        tables.append(pd.read_parquet(path))
    training, cv = tables
    if not training["sample_id"].equals(cv["sample_id"]) or cv["fold_grouped"].isna().any():
        raise ArtifactError(
            f"{directory}: {TRAINING_FILE} and {CV_PREDICTIONS_FILE} do not describe the same "
            "rows with grouped folds: fit the model again with `tpgrid fit`"
        )
    return ElementModel(directory, artifact, estimator, training, cv)


def find_elements(models: str | Path) -> list[Path]:
    """The element directories under ``models`` (or ``models`` itself if it is one)."""
    models = Path(models)
    if (models / MODEL_FILE).is_file():
        return [models]
    found = sorted(path.parent for path in models.glob(f"*/{MODEL_FILE}"))
    if not found:
        raise ArtifactError(
            f"{models} holds no model ({MODEL_FILE} in it or a subdirectory): fit the models "
            "with `tpgrid fit`"
        )
    return found


# --- analyses of one element -----------------------------------------------------------------


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
    """Cross-fit on the grouped folds, then importance, betasq, effects, coverage, training
    space and group comparisons of one element. ``groups`` maps cube variables to predictor
    groups (the cube's ``tpgrid:group`` attributes)."""
    features = model.artifact.features
    X, y = model.X, model.y
    cross = cross_fit(model.estimator, X, y, model.folds, n_trees=settings.cv_trees)
    held_out = [
        HeldOut(_mean_of(forest), cross.rows(fold)) for fold, forest in enumerate(cross.forests)
    ]
    importance = permutation_importance(
        held_out,
        X,
        y,
        features.column_variables,
        n_repeats=settings.importance_repeats,
        seed=settings.seed,
    )
    coverage, k = coverage_table(y, cross, settings.level)
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


def _site_values(model: ElementModel) -> pd.Series[float]:
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
                _site_values(model), site_classes(model, feature), feature.variable
            )
        except AnalysisError as exc:
            log.info("%s by %s: %s", model.element, feature.variable, exc)
    return found


# --- the whole report ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and its summary (also written as ``report.json``)."""

    directory: Path
    html: Path
    figures: tuple[Path, ...]
    summary: dict[str, Any]


@dataclass(frozen=True, eq=False)
class _Contents:
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


def write_report(
    models: str | Path,
    out: str | Path,
    *,
    cube: str | Path | None = None,
    sites: str | Path | None = None,
    prediction: str | Path | None = None,
    settings: ReportSettings | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    not_mapped: Mapping[str, str] | None = None,
) -> ReportResult:
    """Analyse every element model under ``models`` and write the report directory ``out``:
    ``report.html`` (figures embedded), ``figures/*.png``, ``report.json`` and, with
    ``settings.applicability``, ``applicability.zarr`` (computed on the current Dask client).

    ``cube`` and ``sites`` default to the paths recorded by the fit. With ``prediction`` (a
    ``tpgrid predict`` output made with these models), the report maps each element's mean and
    the half-width of its calibrated interval, and records the run's id. ``out`` is replaced
    only when ``overwrite``. ``progress(stage, done, total)`` is called as elements finish.
    ``not_mapped`` (element → reason) lists elements without a model, e.g. too few sites.
    """
    settings = settings or ReportSettings()
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists: choose another directory or pass --overwrite")
    loaded = [load_element(path) for path in find_elements(models)]
    first = loaded[0].artifact.record
    cube_path = Path(cube or first["cube"]["path"])
    sites_path = Path(sites or first["sites"]["path"])
    dataset = open_cube(cube_path)
    maps, run_id = (None, None) if prediction is None else _prediction(prediction, loaded)
    groups = {
        str(name): str(dataset[name].attrs.get("tpgrid:group", "other"))
        for name in dataset.data_vars
    }
    analyses = analyse_elements(loaded, groups, settings, progress)
    descriptive, kept = _descriptive(sites_path, loaded)
    sources = {"models": models, "cube": cube_path, "sites": sites_path, "prediction": prediction}

    staging = staging_path(out)
    staging.mkdir(parents=True)
    try:
        shares: dict[str, float] = {}
        if settings.applicability:
            shares = applicability_cube(
                cube_path,
                [ElementApplicability(a.model.artifact, a.space) for a in analyses],
                staging / APPLICABILITY_DIR,
                progress=progress,
            )
        contents = _Contents(
            analyses=tuple(analyses),
            descriptive=descriptive,
            kept=kept,
            shares=shares,
            settings=settings,
            sources={k: str(Path(v).resolve()) for k, v in sources.items() if v is not None},
            prediction=maps,
            run_id=run_id,
            not_mapped=dict(not_mapped or {}),
        )
        figures_dir = staging / FIGURES_DIR
        figures_dir.mkdir()
        figures = _figures(contents, figures_dir, staging / APPLICABILITY_DIR)
        summary = _summary(contents)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        (staging / REPORT_FILE).write_text(_html(contents, figures, summary), encoding="utf-8")
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
    )


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
        futures = [runner.submit(analyse_element, model, groups, settings) for model in loaded]
        report = (lambda done, total: progress("analyses", done, total)) if progress else None
        return runner.gather(futures, report)


def _prediction(path: str | Path, loaded: Sequence[ElementModel]) -> tuple[xr.Dataset, str]:
    """The prediction run's group and id; :class:`AnalysisError` if an element of the report
    was predicted by another model than the one analysed."""
    maps, run = open_prediction(path)
    for model in loaded:
        entry = run["models"].get(model.element)
        if entry is not None and entry["model_hash"] != model.artifact.model_hash:
            raise AnalysisError(
                f"prediction {path} was made with another {model.element} model than the one "
                f"in {model.directory}: predict again with these models (`tpgrid predict`)"
            )
    return maps, str(run["run_id"])


def _descriptive(
    sites_path: Path, loaded: Sequence[ElementModel]
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The paper's table from the site table and each model's screening record, and the kept
    samples (``site_id``, ``value``) per element. Values as measured (XRF): where the fit
    calibrated an element, the models saw calibrated values, the table does not."""
    elements = [m.element for m in loaded]
    frame = read_sites(sites_path, elements).frame
    measured: dict[str, pd.DataFrame] = {}
    kept: dict[str, pd.DataFrame] = {}
    for model in loaded:
        element = model.element
        rows = frame.dropna(subset=[element])
        measured[element] = pd.DataFrame({"site_id": rows["site_id"], "value": rows[element]})
        removed = set((model.artifact.record.get("screening") or {}).get("removed", {}))
        kept[element] = measured[element][~rows["sample_id"].isin(removed)]
    return descriptive_table(measured, kept), kept


# --- figures -----------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)
    return path


def _panels(figure: Figure, n: int, columns: int) -> list[Any]:
    rows = math.ceil(n / columns)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def histogram_figure(kept: Mapping[str, pd.DataFrame], path: Path) -> Path:
    """One histogram per element of the screened sample values, with the site-level mean."""
    columns = min(4, len(kept))
    figure = _new_figure(3.2 * columns, 2.6 * math.ceil(len(kept) / columns))
    for ax, (element, frame) in zip(_panels(figure, len(kept), columns), kept.items(), strict=True):
        ax.hist(frame["value"], bins=25, color="#4c72b0", edgecolor="white")
        ax.axvline(site_means(frame).mean(), color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{element} (n = {len(frame)})")
        ax.set_xlabel("mg/kg")
    return _save(figure, path)


def groups_figure(analyses: Sequence[ElementAnalysis], factor: str, path: Path) -> Path | None:
    """Violins, boxes, means and Tukey letters of site means by the classes of ``factor``, one
    panel per element that has the comparison; None if none has."""
    shown = [a for a in analyses if factor in a.comparisons]
    if not shown:
        return None
    columns = min(4, len(shown))
    figure = _new_figure(3.6 * columns, 3.0 * math.ceil(len(shown) / columns))
    for ax, analysis in zip(_panels(figure, len(shown), columns), shown, strict=True):
        result = analysis.comparisons[factor]
        feature = next(
            f for f in analysis.model.artifact.features.categorical if f.variable == factor
        )
        classes = site_classes(analysis.model, feature)
        values = _site_values(analysis.model)
        order = [name for name in feature.names if name in result.table.index]
        data = [values[classes[classes == name].index].to_numpy() for name in order]
        positions = np.arange(len(order))
        ax.violinplot(data, positions, showextrema=False)
        ax.boxplot(data, positions=positions, widths=0.15, showfliers=False)
        ax.plot(positions, [d.mean() for d in data], "o", color="black", markersize=4)
        top = max(float(d.max()) for d in data)
        for x, name in zip(positions, order, strict=True):
            ax.text(x, top * 1.04, result.table.loc[name, "letters"], ha="center", fontsize=9)
        ax.set_ylim(top=top * 1.12)
        ax.set_xticks(positions, order, rotation=30, fontsize=8)
        ax.set_title(f"{analysis.element}: ANOVA p = {result.p_value:.2g}", fontsize=10)
        ax.set_ylabel("site mean, mg/kg (as modelled)")
    return _save(figure, path)


def importance_figure(analysis: ElementAnalysis, path: Path) -> Path:
    """%IncMSE per predictor (± SD between shuffles), summed per group, and betasq shares."""
    figure = _new_figure(12, 0.22 * len(analysis.importance) + 1.6)
    left, middle, right = figure.subplots(1, 3, width_ratios=(1.3, 1, 1.3))
    importance = analysis.importance.iloc[::-1]
    left.barh(importance.index, importance["incmse"], xerr=importance["sd"], color="#4c72b0")
    left.set_xlabel("%IncMSE (held-out)")
    groups = analysis.by_group.iloc[::-1]
    middle.barh(groups.index, groups.to_numpy(), color="#55a868")
    middle.set_xlabel("%IncMSE summed per group")
    shares = analysis.betasq["percent"].iloc[::-1]
    right.barh(shares.index, shares.to_numpy(), color="#c44e52")
    right.set_xlabel("betasq, % of total")
    for ax in (left, middle, right):
        ax.tick_params(labelsize=8)
    figure.suptitle(f"{analysis.element}: drivers")
    return _save(figure, path)


def effects_figure(analysis: ElementAnalysis, path: Path) -> Path | None:
    """PDP (top) and ALE (bottom) of the chosen predictors, with the training deciles."""
    if not analysis.effects:
        return None
    n = len(analysis.effects)
    figure = _new_figure(2.8 * n, 5.0)
    axes = figure.subplots(2, n, squeeze=False)
    columns = analysis.model.artifact.features.columns
    for j, (pdp, ale) in enumerate(analysis.effects):
        x = analysis.model.X[:, columns.index(pdp.variable)]
        deciles = np.quantile(x, np.linspace(0.1, 0.9, 9))
        for ax, effect, label in ((axes[0, j], pdp, "PDP, mg/kg"), (axes[1, j], ale, "ALE, mg/kg")):
            ax.plot(effect.grid, effect.values, color="#4c72b0")
            ax.plot(deciles, np.full(9, effect.values.min()), "|", color="grey", markersize=8)
            ax.set_xlabel(pdp.variable)
            if j == 0:
                ax.set_ylabel(label)
    figure.suptitle(f"{analysis.element}: partial dependence (top), accumulated local effects")
    return _save(figure, path)


def observed_predicted_figure(analyses: Sequence[ElementAnalysis], path: Path) -> Path:
    """Observed (y) against grouped-CV predicted (x) per element, OLS and 1:1 lines."""
    columns = min(4, len(analyses))
    figure = _new_figure(3.2 * columns, 3.1 * math.ceil(len(analyses) / columns))
    for ax, analysis in zip(_panels(figure, len(analyses), columns), analyses, strict=True):
        predicted = analysis.model.cv["predicted_grouped"].to_numpy(dtype=np.float64)
        observed = analysis.model.y
        ax.scatter(predicted, observed, s=6, alpha=0.5, color="#4c72b0")
        low = float(min(predicted.min(), observed.min()))
        high = float(max(predicted.max(), observed.max()))
        ax.plot([low, high], [low, high], "--", color="grey", label="1:1")
        slope, intercept = analysis.lines["grouped"]
        ax.plot(
            [low, high],
            [intercept + slope * low, intercept + slope * high],
            color="#1f3b73",
            label="OLS",
        )
        metrics = analysis.model.artifact.record.get("cv", {}).get("grouped", {})
        r2, rmse = metrics.get("r2", math.nan), metrics.get("rmse", math.nan)
        ax.set_title(f"{analysis.element}: R² {r2:.2f}, RMSE {_number(rmse)}", fontsize=10)
        ax.set_xlabel("predicted (grouped CV), mg/kg")
        ax.set_ylabel("observed, mg/kg")
        ax.legend(fontsize=7, loc="upper left")
    return _save(figure, path)


def coverage_figure(analyses: Sequence[ElementAnalysis], level: float, path: Path) -> Path:
    """Achieved coverage of each interval method per element against the nominal level."""
    figure = _new_figure(max(6.0, 1.3 * len(analyses) + 2), 3.6)
    ax = figure.subplots()
    methods = list(analyses[0].coverage.index)
    width = 0.8 / len(methods)
    x = np.arange(len(analyses))
    for i, method in enumerate(methods):
        achieved = [a.coverage.loc[method, "achieved"] for a in analyses]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, achieved, width, label=method)
    ax.axhline(level, color="black", linestyle="--", linewidth=1, label=f"nominal {level:.0%}")
    ax.set_xticks(x, [a.element for a in analyses])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of held-out samples inside")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(figure, path)


def applicability_figure(
    applicability: Path, analysis: ElementAnalysis, share: float, path: Path
) -> Path:
    """The element's DI map (coloured up to twice the threshold) and its AOA."""
    di_array = zarr.open_array(applicability / layer_name(analysis.element, "di"), mode="r")
    step = max(1, math.ceil(max(di_array.shape) / MAP_PX))
    di = np.asarray(di_array[::step, ::step])
    aoa = np.asarray(
        zarr.open_array(applicability / layer_name(analysis.element, "aoa"), mode="r")[
            ::step, ::step
        ]
    )
    figure = _new_figure(11, 4.8)
    left, right = figure.subplots(1, 2)
    shown = left.imshow(di, cmap="magma_r", vmin=0, vmax=2 * analysis.space.threshold)
    figure.colorbar(
        shown, ax=left, shrink=0.8, label=f"DI (threshold {analysis.space.threshold:.3g})"
    )
    left.set_title(f"{analysis.element}: dissimilarity index")
    classes = np.where(aoa == AOA_NODATA, np.nan, aoa.astype(np.float64))
    right.imshow(classes, cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest")
    right.set_title(f"area of applicability: {share:.0%} of valid pixels inside (green)")
    for ax in (left, right):
        ax.set_axis_off()
    return _save(figure, path)


def map_figure(
    prediction: xr.Dataset,
    analysis: ElementAnalysis,
    applicability: Path | None,
    level: float,
    path: Path,
) -> Path:
    """The element's predicted mean and the half-width ``k·sd`` of its calibrated interval,
    grey outside the area of applicability when it was computed."""
    element = analysis.element
    mean_layer = prediction[variable_name(element, "mean")]
    step = max(1, math.ceil(max(mean_layer.shape) / MAP_PX))
    every = {"y": slice(None, None, step), "x": slice(None, None, step)}
    mean = np.asarray(mean_layer.isel(every).values, dtype=np.float64)
    half = analysis.k * np.asarray(
        prediction[variable_name(element, "sd")].isel(every).values, dtype=np.float64
    )
    outside = np.zeros(mean.shape, dtype=bool)
    if applicability is not None:
        aoa = zarr.open_array(applicability / layer_name(element, "aoa"), mode="r")
        outside = np.asarray(aoa[::step, ::step]) == 0
    figure = _new_figure(11, 4.8)
    for ax, values, title, cmap in zip(
        figure.subplots(1, 2),
        (mean, half),
        (
            f"{element}: mean, mg/kg",
            f"half-width of the {level:.0%} interval (k = {analysis.k:.2f}), mg/kg",
        ),
        ("viridis", "magma_r"),
        strict=True,
    ):
        ax.set_facecolor("#bbbbbb")
        shown = ax.imshow(np.where(outside, np.nan, values), cmap=cmap, interpolation="nearest")
        figure.colorbar(shown, ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(figure, path)


#: Sections of the report's figures, in the page's order.
SECTIONS = ("descriptive", "groups", "drivers", "checks", "applicability", "uncertainty", "maps")
#: One figure to draw: its report section, the function drawing it and that function's
#: arguments (the last is the PNG path; the function returns it, or None if nothing to draw).
Drawing = tuple[str, Callable[..., Path | None], tuple[Any, ...]]


def _figures(contents: _Contents, directory: Path, applicability: Path) -> dict[str, list[Path]]:
    """Every figure of the report, by section."""
    drawings = _drawings(contents, directory, applicability)
    sections: dict[str, list[Path]] = {section: [] for section in SECTIONS}
    for (section, _, _), path in zip(drawings, _draw(drawings, contents.analyses), strict=True):
        if path is not None:
            sections[section].append(path)
    return sections


def _drawings(contents: _Contents, directory: Path, applicability: Path) -> list[Drawing]:
    """What :func:`_figures` draws, in the report's order."""
    analyses = contents.analyses
    drawings: list[Drawing] = [
        ("descriptive", histogram_figure, (contents.kept, directory / "histograms.png")),
        ("checks", observed_predicted_figure, (analyses, directory / "observed_predicted.png")),
        (
            "uncertainty",
            coverage_figure,
            (analyses, contents.settings.level, directory / "coverage.png"),
        ),
    ]
    for factor in FACTORS:
        drawings.append(
            ("groups", groups_figure, (analyses, factor, directory / f"groups_{factor}.png"))
        )
    for analysis in analyses:
        element = analysis.element
        drawings += [
            ("drivers", importance_figure, (analysis, directory / f"importance_{element}.png")),
            ("drivers", effects_figure, (analysis, directory / f"effects_{element}.png")),
        ]
        if element in contents.shares:
            share = contents.shares[element]
            path = directory / f"applicability_{element}.png"
            drawings.append(
                ("applicability", applicability_figure, (applicability, analysis, share, path))
            )
        if (
            contents.prediction is not None
            and variable_name(element, "mean") in contents.prediction
        ):
            aoa = applicability if element in contents.shares else None
            level = contents.settings.level
            path = directory / f"map_{element}.png"
            drawings.append(("maps", map_figure, (contents.prediction, analysis, aoa, level, path)))
    return drawings


def _draw(drawings: Sequence[Drawing], analyses: Sequence[ElementAnalysis]) -> list[Path | None]:
    """Draw every figure: one task per figure on the current Dask client (rendering and PNG
    encoding are most of a report's time, and its workers are otherwise idle), or one after
    another in this process when there is no client. The analyses reach each worker once."""
    with task_runner(local_threads=1) as runner:
        shared = dict(zip(map(id, analyses), runner.share(*analyses), strict=True))

        def sent(value: Any) -> Any:
            """An argument as the task gets it: analyses (alone or a tuple of them) shared."""
            if isinstance(value, ElementAnalysis):
                return shared[id(value)]
            if (
                isinstance(value, tuple)
                and value
                and all(isinstance(v, ElementAnalysis) for v in value)
            ):
                return tuple(shared[id(v)] for v in value)
            return value

        futures = [runner.submit(function, *map(sent, args)) for _, function, args in drawings]
        return runner.gather(futures)


# --- summary and page --------------------------------------------------------------------------


def _summary(contents: _Contents) -> dict[str, Any]:
    """The report's numbers as JSON: what a run record links to and a reader can diff."""
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
            "coverage": analysis.coverage.reset_index().to_dict(orient="records"),
            "interval_k": analysis.k,
            "correlated_pairs": analysis.correlated.to_dict(orient="records"),
            "importance_incmse": analysis.importance["incmse"].to_dict(),
            "importance_by_group": analysis.by_group.to_dict(),
            "betasq_percent": analysis.betasq["percent"].to_dict(),
            "groups": {
                factor: {
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
    summary: dict[str, Any] = _plain(
        {
            "format": "tpgrid-report/1",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "tpgrid_version": __version__,
            **contents.sources,
            "prediction_run_id": contents.run_id,
            "level": contents.settings.level,
            "applicability": APPLICABILITY_DIR if contents.shares else None,
            "elements": elements,
            "not_mapped": contents.not_mapped,
        }
    )
    return summary


def _plain(value: Any) -> Any:
    """Strict JSON values all the way down: numpy scalars to Python ones, NaN and ±inf to
    null (JSON has no NaN), tuples to lists, keys to strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
p.note { color: #555; font-size: 0.9em; }
"""


def _img(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{encoded}">'


def _number(value: float, digits: int = 3) -> str:
    """``digits`` significant digits, but whole numbers rather than exponents for thousands
    (Fe is tens of thousands of mg/kg)."""
    return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(
        float_format=lambda v: _number(v, digits), border=0, na_rep="–", escape=True
    )


def _letters_table(analyses: Sequence[ElementAnalysis], factor: str) -> pd.DataFrame:
    """Per element (rows) and class (columns): mean site value and Tukey letters."""
    rows: dict[str, dict[str, str]] = {}
    for analysis in analyses:
        result = analysis.comparisons.get(factor)
        if result is None:
            continue
        cells = {
            str(name): f"{_number(row['mean'], 4)} {row['letters']} (n={int(row['n_sites'])})"
            for name, row in result.table.iterrows()
        }
        rows[analysis.element] = {"ANOVA p": f"{result.p_value:.2g}", **cells}
    return pd.DataFrame.from_dict(rows, orient="index")


def _html(
    contents: _Contents, figures: Mapping[str, Sequence[Path]], summary: Mapping[str, Any]
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
        f"<br>tpgrid {html.escape(summary['tpgrid_version'])}, {summary['created']}</p>"
        + _not_mapped_html(contents.not_mapped),
        "<h2>1. Descriptive statistics</h2>"
        "<p class='note'>Samples measured and kept after screening (mean ± k SD); mean, SD, CV "
        "and median over site means of the kept samples, min/max over the samples, mg/kg as "
        "measured.</p>" + _table(contents.descriptive, 5) + images("descriptive"),
        "<h2>2. Group differences</h2><p class='note'>One-way ANOVA and Tukey HSD (α = 0.05) of "
        "site means, on the values the models were fitted to; classes sharing a letter do not "
        "differ; classes with fewer than two sites are not tested.</p>"
        + "".join(
            f"<h3>{factor}</h3>" + _table(_letters_table(analyses, factor)) for factor in FACTORS
        )
        + images("groups"),
        "<h2>3. Drivers</h2><p class='note'>%IncMSE: growth of the held-out MSE when a "
        "predictor is shuffled, on forests refitted on the grouped CV folds. betasq: squared "
        "standardized OLS coefficients (aliased columns left out). PDP and ALE of the final "
        "forest over the training rows; ticks mark the training deciles. Strongly correlated "
        "predictors (below) split or swap credit in all three: read them together.</p>"
        + (_table(correlated) if not correlated.empty else "")
        + images("drivers"),
        "<h2>4. Model checks</h2><p class='note'>Observed (y) against out-of-fold predicted (x), "
        "after Piñeiro et al. (2008); metrics of the fit's grouped (by site), random (by sample, "
        "leaky, for comparison) and spatial (block) CV.</p>" + _table(metrics) + images("checks"),
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
        + images("uncertainty")
        + (
            f"<h3>Maps</h3><p class='note'>Mean, and half-width k·sd of the calibrated {level} "
            f"interval, of prediction run {contents.run_id}; grey: outside the area of "
            "applicability.</p>" + images("maps")
            if figures["maps"]
            else ""
        ),
        f"<h2>Closing note</h2><p>Coverage of the {level} interval on held-out sites: "
        f"{html.escape(closing)}. Maps of mean ± k·sd with these k are intervals that held at "
        "the stated rate on sites the models had not seen; inter-tree variance alone is not.</p>",
    ]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>tpgrid report</title><style>{_STYLE}</style></head><body>{body}</body></html>\n"
    )
