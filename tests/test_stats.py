"""Descriptive statistics and ANOVA + Tukey HSD letters, checked against
hand-worked cases and against the group effects built into the synthetic plateau."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.plateau_fixtures import plateau  # noqa: F401  (fixture)
from tpgrid.core.stats import (
    compact_letters,
    compare_groups,
    describe,
    descriptive_table,
    site_means,
)
from tpgrid.errors import AnalysisError
from tpgrid.synthetic import LITHOLOGY_FACTORS, PAPER_MEAN_SD, VEGETATION_FACTORS, PlateauFiles


@pytest.fixture(scope="module")
def samples(plateau: PlateauFiles) -> pd.DataFrame:  # noqa: F811
    """The site table without the gross outliers the synthetic plateau injected."""
    table = pd.read_csv(plateau.sites)
    outliers = pd.read_csv(plateau.outliers)
    for element, group in outliers.groupby("element"):
        table.loc[table["sample_id"].isin(group["sample_id"]), str(element)] = np.nan
    return table


def element_frame(table: pd.DataFrame, element: str) -> pd.DataFrame:
    measured = table.dropna(subset=[element])
    return pd.DataFrame({"site_id": measured["site_id"], "value": measured[element]})


def site_classes(table: pd.DataFrame, column: str) -> pd.Series:
    return table.groupby("site_id")[column].first()


# --- descriptive statistics ---------------------------------------------------------------------


def test_describe_summarises_site_means_and_counts_samples() -> None:
    measured = pd.DataFrame({"site_id": ["a", "a", "b", "b", "c"], "value": [1, 3, 4, 6, 900.0]})
    kept = measured.iloc[:4]
    row = describe(measured, kept)
    # Site means 2 and 5: mean 3.5, SD 2.1213 (ddof 1); range over the kept samples 1..6.
    assert row["n_measured"] == 5
    assert row["n_kept"] == 4
    assert row["n_sites"] == 2
    assert row["mean"] == pytest.approx(3.5)
    assert row["sd"] == pytest.approx(np.sqrt(4.5))
    assert row["cv_percent"] == pytest.approx(100 * np.sqrt(4.5) / 3.5)
    assert (row["min"], row["max"]) == (1.0, 6.0)


def test_describe_refuses_an_element_with_nothing_kept() -> None:
    empty = pd.DataFrame({"site_id": [], "value": []})
    with pytest.raises(AnalysisError, match="nothing to describe"):
        describe(empty, empty)


@pytest.mark.slow
def test_descriptive_table_recovers_the_paper_site_means_the_plateau_was_scaled_to(
    plateau: PlateauFiles,  # noqa: F811
    samples: pd.DataFrame,
) -> None:
    raw = pd.read_csv(plateau.sites)
    elements = ("Fe", "Mn", "Cu", "V")  # measured 1:1 by XRF, no calibration needed
    table = descriptive_table(
        {e: element_frame(raw, e) for e in elements},
        {e: element_frame(samples, e) for e in elements},
    )
    outliers = pd.read_csv(plateau.outliers)["element"].value_counts()
    for element in elements:
        assert table.loc[element, "n_measured"] - table.loc[element, "n_kept"] == outliers[element]
        # Site effects, XRF noise and a finite sample: within 12 % of the paper's site mean.
        assert table.loc[element, "mean"] == pytest.approx(PAPER_MEAN_SD[element][0], rel=0.12)


# --- compact letters ------------------------------------------------------------------------------


def test_compact_letters_of_a_chain_share_letters_between_neighbours() -> None:
    # A differs from C and D, B from D: A-B, B-C and C-D are not different.
    different = [frozenset("AC"), frozenset("AD"), frozenset("BD")]
    assert compact_letters(list("ABCD"), different) == {"A": "a", "B": "ab", "C": "bc", "D": "c"}


def test_compact_letters_give_every_group_a_letter_when_all_differ() -> None:
    different = [frozenset("AB"), frozenset("AC"), frozenset("BC")]
    assert compact_letters(list("ABC"), different) == {"A": "a", "B": "b", "C": "c"}


def test_compact_letters_give_one_letter_when_nothing_differs() -> None:
    assert compact_letters(list("ABC"), []) == {"A": "a", "B": "a", "C": "a"}


# --- group comparisons on the synthetic plateau -------------------------------------------------


def shares_letter(letters: pd.Series, a: str, b: str) -> bool:
    return bool(set(letters[a]) & set(letters[b]))


def test_tukey_separates_the_vegetation_types_the_synthetic_mn_factors_separate(
    samples: pd.DataFrame,
) -> None:
    mn = element_frame(samples, "Mn")
    result = compare_groups(site_means(mn), site_classes(samples, "vegetation"), "vegetation")
    letters = result.table["letters"]
    factors = VEGETATION_FACTORS["Mn"]
    tested = list(result.table.index)
    # Steppe (×0.880) lies ≥ 14 % below meadow (×1.018) and shrub (×1.133) and differs from
    # both; shrub and meadow, 11 % apart on 15 shrub sites among slope's and lithology's
    # larger spread, do not. The letters follow the factors ('a' for the largest).
    assert sorted(tested, key=factors.__getitem__, reverse=True) == tested
    assert not shares_letter(letters, "shrub", "steppe")
    assert not shares_letter(letters, "meadow", "steppe")
    assert shares_letter(letters, "shrub", "meadow")
    assert letters["shrub"] == "a"
    assert result.p_value < 0.01


def test_tukey_separates_acidic_metamorphic_from_the_low_lithologies(
    samples: pd.DataFrame,
) -> None:
    lithology = site_classes(samples, "lithology")
    ni = compare_groups(site_means(element_frame(samples, "Ni")), lithology, "lithology")
    fe = compare_groups(site_means(element_frame(samples, "Fe")), lithology, "lithology")
    # Ni: MA ×1.306 against SC ×0.97 and UF ×1.0; Fe: MA ×1.238 against SO ×0.863.
    assert LITHOLOGY_FACTORS["Ni"]["MA"] > 1.25 * LITHOLOGY_FACTORS["Ni"]["SC"]
    assert ni.table.index[0] == "MA"
    assert not shares_letter(ni.table["letters"], "MA", "SC")
    assert not shares_letter(ni.table["letters"], "MA", "UF")
    assert not shares_letter(fe.table["letters"], "MA", "SO")


def test_classes_with_one_site_are_left_out_of_the_tests(samples: pd.DataFrame) -> None:
    vegetation = site_classes(samples, "vegetation")
    assert (vegetation == "forest").sum() == 1  # the small plateau has one forest site
    result = compare_groups(site_means(element_frame(samples, "Fe")), vegetation, "vegetation")
    assert result.left_out == ("forest",)
    assert "forest" not in result.table.index


def test_compare_groups_refuses_a_single_class() -> None:
    values = pd.Series([1.0, 2.0, 3.0], index=["a", "b", "c"])
    groups = pd.Series(["x", "x", "x"], index=["a", "b", "c"])
    with pytest.raises(AnalysisError, match="fewer than two classes"):
        compare_groups(values, groups, "vegetation")
