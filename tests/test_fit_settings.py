"""Fit settings: the search grid's candidates, YAML files, overrides and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpgrid.errors import ConfigError
from tpgrid.fit.settings import SearchGrid, fit_settings

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
