"""Descriptive statistics and group differences of the paper, as pure functions.

Everything here takes pandas/numpy values in mg/kg and returns tables; nothing reads files or
plots. Group differences are computed on *site means*: a site's triplicates share one pixel,
one vegetation type and one lithology, so treating them as three independent observations
would triple the degrees of freedom of the ANOVA and make Tukey's intervals too narrow.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tpgrid.errors import AnalysisError

#: Significance level of the paper's Tukey HSD letters.
ALPHA = 0.05


# --- descriptive statistics -------------------------------------------------------------------


def site_means(samples: pd.DataFrame) -> pd.Series[float]:
    """Mean ``value`` per ``site_id`` (mg/kg), sorted by site id."""
    means: pd.Series[float] = samples.groupby("site_id", sort=True)["value"].mean()
    return means


def describe(measured: pd.DataFrame, kept: pd.DataFrame) -> dict[str, float]:
    """One row of the paper's descriptive table for one element.

    ``measured`` and ``kept`` have ``site_id`` and ``value`` (mg/kg) per sample, before and
    after outlier screening. Mean, SD (ddof = 1), CV and median are over site means of the kept
    samples (the paper's "site-level summaries"); min and max over the kept samples.
    """
    if kept.empty:
        raise AnalysisError("no samples left after screening: nothing to describe")
    per_site = site_means(kept)
    mean = float(per_site.mean())
    sd = float(per_site.std(ddof=1)) if per_site.size > 1 else float("nan")
    return {
        "n_measured": float(len(measured)),
        "n_kept": float(len(kept)),
        "n_sites": float(per_site.size),
        "mean": mean,
        "sd": sd,
        "cv_percent": 100.0 * sd / mean if mean else float("nan"),
        "median": float(per_site.median()),
        "min": float(kept["value"].min()),
        "max": float(kept["value"].max()),
    }


def descriptive_table(
    measured: Mapping[str, pd.DataFrame], kept: Mapping[str, pd.DataFrame]
) -> pd.DataFrame:
    """The paper's table: one row per element (in ``kept`` order), columns of :func:`describe`."""
    rows = {element: describe(measured[element], frame) for element, frame in kept.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


# --- group differences --------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupComparison:
    """One-way ANOVA and Tukey HSD of one element's site means across the classes of a factor.

    ``table`` has one row per class tested, by decreasing mean: ``n_sites``, ``mean``, ``sd``
    (mg/kg) and ``letters`` (compact letter display: classes sharing a letter do not differ at
    ``alpha``). ``tukey_p`` holds the pairwise adjusted p-values. Classes with fewer than
    ``min_sites`` sites are listed in ``left_out`` rather than tested.
    """

    factor: str
    table: pd.DataFrame
    f_statistic: float
    p_value: float
    tukey_p: pd.DataFrame
    alpha: float
    left_out: tuple[str, ...]


def compare_groups(
    values: pd.Series[float],
    groups: pd.Series[str],
    factor: str,
    *,
    alpha: float = ALPHA,
    min_sites: int = 2,
) -> GroupComparison:
    """ANOVA + Tukey HSD of site means ``values`` by class ``groups`` (both indexed by site).

    Raises :class:`AnalysisError` when fewer than two classes have ``min_sites`` sites.
    """
    frame = pd.DataFrame({"value": values, "group": groups.reindex(values.index)}).dropna()
    counts = frame["group"].value_counts()
    tested = sorted(str(g) for g in counts.index[counts >= min_sites])
    left_out = tuple(sorted(str(g) for g in counts.index[counts < min_sites]))
    if len(tested) < 2:
        raise AnalysisError(
            f"{factor}: fewer than two classes have {min_sites} or more sites "
            f"({dict(counts)}): no group comparison possible"
        )
    frame = frame[frame["group"].isin(tested)]
    summary = frame.groupby("group").agg(
        n_sites=("value", "size"), mean=("value", "mean"), sd=("value", "std")
    )
    summary = summary.sort_values("mean", ascending=False)
    order = [str(g) for g in summary.index]
    samples = [frame.loc[frame["group"] == g, "value"].to_numpy() for g in order]
    from scipy import stats  # here: scipy.stats costs a quarter second to import

    anova = stats.f_oneway(*samples)
    tukey = stats.tukey_hsd(*samples)
    pvalues = np.asarray(tukey.pvalue, dtype=np.float64)
    different = {
        frozenset((order[i], order[j]))
        for i in range(len(order))
        for j in range(i + 1, len(order))
        if pvalues[i, j] < alpha
    }
    summary["letters"] = pd.Series(compact_letters(order, different))
    summary.index.name = factor
    return GroupComparison(
        factor=factor,
        table=summary,
        f_statistic=float(anova.statistic),
        p_value=float(anova.pvalue),
        tukey_p=pd.DataFrame(pvalues, index=order, columns=order),
        alpha=alpha,
        left_out=left_out,
    )


def compact_letters(order: list[str], different: Iterable[frozenset[str]]) -> dict[str, str]:
    """Compact letter display by insert-and-absorb (Piepho 2004).

    ``order`` lists the groups by decreasing mean; ``different`` holds the pairs that differ
    significantly. Two groups share a letter exactly when they do not differ; ``a`` goes to
    the highest mean, as in the paper's figures.
    """
    columns: list[set[str]] = [set(order)]
    for pair in sorted(different, key=sorted):
        a, b = tuple(pair)
        split: list[set[str]] = []
        for column in columns:
            if a in column and b in column:
                split += [column - {a}, column - {b}]
            else:
                split.append(column)
        # Absorb: a column contained in another adds no information.
        unique = [c for i, c in enumerate(split) if c not in split[:i]]
        columns = [c for c in unique if not any(c < other for other in unique)]
    rank = {group: i for i, group in enumerate(order)}
    columns.sort(key=lambda column: sorted(rank[g] for g in column))
    if len(columns) > len(string.ascii_letters):
        raise AnalysisError(f"{len(columns)} letter columns: too many groups to letter")
    letters = dict.fromkeys(order, "")
    for letter, column in zip(string.ascii_letters, columns, strict=False):
        for group in column:
            letters[group] += letter
    return letters
