"""Fit settings: the search grid's candidates, YAML files, overrides and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpgrid.errors import ConfigError, SiteTableError
from tpgrid.fit.heldout import quantile_levels
from tpgrid.fit.settings import FitSettings, SearchGrid, fit_settings, read_fit_sites

# --- settings -------------------------------------------------------------------------------


def test_search_grid_candidates_are_every_combination() -> None:
    grid = SearchGrid(max_features=(0.3, 0.6), min_samples_leaf=(1, 3, 5), max_depth=(None, 8))
    candidates = grid.candidates()
    assert len(candidates) == 12
    assert {"max_features": 0.6, "min_samples_leaf": 3, "max_depth": 8} in candidates


def test_settings_file_with_an_unknown_key_names_it(tmp_path: Path) -> None:
    (tmp_path / "fit.yaml").write_text("n_tree: 300\n")
    with pytest.raises(ConfigError, match="n_tree: unknown key"):
        fit_settings(tmp_path / "fit.yaml", {})


def test_overrides_apply_on_top_of_the_settings_file(tmp_path: Path) -> None:
    (tmp_path / "fit.yaml").write_text("n_trees: 300\nsearch_grid: {max_features: [0.5]}\n")
    settings = fit_settings(tmp_path / "fit.yaml", {"cv_folds": 5})
    assert (settings.n_trees, settings.cv_folds) == (300, 5)
    assert settings.search_grid.max_features == (0.5,)


def test_max_features_must_be_fractions() -> None:
    with pytest.raises(ConfigError, match=r"search_grid\.max_features"):
        fit_settings(None, {"search_grid": {"max_features": [7]}})


@pytest.mark.parametrize("level", [0.5, 1.0, 90])
def test_the_interval_level_is_a_share_above_one_half(level: float) -> None:
    with pytest.raises(ConfigError, match="interval_level"):
        fit_settings(None, {"interval_level": level})


def test_the_interval_level_is_read_from_yaml(tmp_path: Path) -> None:
    (tmp_path / "fit.yaml").write_text("interval_level: 0.8\n")
    assert fit_settings(tmp_path / "fit.yaml", {}).interval_level == 0.8
    assert fit_settings(None, {}).interval_level == 0.9


def test_the_fold_tasks_predict_the_quantiles_of_the_interval_level_and_the_median() -> None:
    assert quantile_levels(0.9) == (0.05, 0.5, 0.95)
    assert quantile_levels(0.8) == (0.1, 0.5, 0.9)


# --- defaults from the data: elements and calibration -----------------------------------------


def survey(tmp_path: Path) -> Path:
    """A field survey elsewhere: Pb, Cd and As, ICP-MS re-measures of Pb only, a pH column."""
    rows = [
        f"s{i},s{i}-a,{10 + i * 0.01},{50 + i * 0.01},{20 + i},{0.1 * i},{3 + i},"
        f"{'' if i % 2 else 19 + i},{6.5}"
        for i in range(12)
    ]
    path = tmp_path / "survey.csv"
    path.write_text("site_id,sample_id,lon,lat,Pb,Cd,As,Pb_icpms,ph\n" + "\n".join(rows) + "\n")
    return path


def test_the_defaults_leave_elements_calibration_and_blocks_to_the_data() -> None:
    settings = FitSettings()
    assert settings.elements is None
    assert settings.calibrate == "auto"
    assert settings.spatial_block_km is None


def test_unset_elements_are_the_tables_element_columns_and_auto_calibrates_those_with_icpms(
    tmp_path: Path,
) -> None:
    read = read_fit_sites(survey(tmp_path), FitSettings())
    assert read.elements == ("Pb", "Cd", "As")  # table order; ph is no element
    assert read.calibrate == ("Pb",)
    # The resolved values are what the settings (and so every model record and hash) hold.
    assert (read.settings.elements, read.settings.calibrate) == (("Pb", "Cd", "As"), ("Pb",))


def test_explicit_elements_and_calibration_are_used_as_given(tmp_path: Path) -> None:
    read = read_fit_sites(survey(tmp_path), FitSettings(elements=("As", "Pb"), calibrate=()))
    assert read.elements == ("As", "Pb")
    assert read.calibrate == ()
    # A calibrated element the fit leaves out is not calibrated.
    read = read_fit_sites(survey(tmp_path), FitSettings(elements=("Cd",), calibrate=("Pb",)))
    assert read.calibrate == ()


def test_an_element_without_its_column_names_both_keys(tmp_path: Path) -> None:
    with pytest.raises(SiteTableError, match=r"\['Zn'\]") as error:
        read_fit_sites(survey(tmp_path), FitSettings(elements=("Pb", "Zn")))
    assert "fit.elements in the pipeline YAML, or --element" in str(error.value)
    assert "['Pb', 'Cd', 'As']" in str(error.value)


def test_a_table_without_element_columns_names_both_keys(tmp_path: Path) -> None:
    path = tmp_path / "no_elements.csv"
    path.write_text("site_id,sample_id,lon,lat,lead_ppm\ns1,s1-a,10,50,3\n")
    with pytest.raises(SiteTableError, match="no element column") as error:
        read_fit_sites(path, FitSettings())
    assert "fit.elements in the pipeline YAML, or --element" in str(error.value)


def test_calibrating_an_element_without_icpms_values_names_the_key_and_how_to_turn_it_off(
    tmp_path: Path,
) -> None:
    with pytest.raises(SiteTableError, match=r"\['Cd_icpms'\]") as error:
        read_fit_sites(survey(tmp_path), FitSettings(calibrate=("Pb", "Cd")))
    message = str(error.value)
    assert "fit.calibrate in the pipeline YAML, or --calibrate" in message
    assert "[] turns calibration off" in message


@pytest.mark.parametrize(
    ("text", "expected"), [("auto", "auto"), ("[]", ()), ("[Zn, Ni]", ("Zn", "Ni"))]
)
def test_calibrate_in_yaml_is_auto_or_a_list(tmp_path: Path, text: str, expected: object) -> None:
    (tmp_path / "fit.yaml").write_text(f"calibrate: {text}\n")
    assert fit_settings(tmp_path / "fit.yaml", {}).calibrate == expected


def test_calibrate_as_a_bare_element_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fit.yaml").write_text("calibrate: Zn\n")
    with pytest.raises(ConfigError, match="calibrate"):
        fit_settings(tmp_path / "fit.yaml", {})
