"""Figures keyed by what they are drawn from, and reused from a previous report only when the
key matches and the file matches the previous report's SHA256SUMS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tpgrid.publication import write_manifest
from tpgrid.report.figure_data import FigurePlan
from tpgrid.report.render import (
    KEYS_FILE,
    figure_key,
    previous_figures,
    render_figure,
    render_figures,
    write_keys,
)
from tpgrid.report.settings import FIGURES_DIR


def _histograms(values: np.ndarray, site_mean: float = 2.0) -> FigurePlan:
    panel = {"element": "Fe", "values": values, "site_mean": site_mean}
    return FigurePlan("descriptive", "histograms.png", "histograms", {"panels": [panel]})


def _coverage(level: float) -> FigurePlan:
    data = {
        "elements": ["Fe", "Ni"],
        "methods": ["quantiles", "calibrated"],
        "achieved": np.array([[0.7, 0.6], [0.9, 0.92]]),
        "level": level,
    }
    return FigurePlan("uncertainty", "coverage.png", "coverage", data)


VALUES = np.linspace(0.0, 5.0, 40)


def _report(folder: Path, plans: list[FigurePlan]) -> Path:
    """A report folder as publishing leaves it: figures, their keys, and SHA256SUMS."""
    (folder / FIGURES_DIR).mkdir(parents=True)
    write_keys(folder, render_figures(plans, folder / FIGURES_DIR))
    write_manifest(folder)
    return folder


def test_a_figure_key_changes_with_any_value_it_is_drawn_from() -> None:
    key = figure_key("histograms", _histograms(VALUES).data)
    assert key == figure_key("histograms", _histograms(VALUES.copy()).data)
    changed = VALUES.copy()
    changed[17] = np.nextafter(changed[17], np.inf)  # one value, by its last bit
    assert figure_key("histograms", _histograms(changed).data) != key
    assert figure_key("histograms", _histograms(VALUES.astype(np.float32)).data) != key
    assert figure_key("histograms", _histograms(VALUES, 2.0 + 1e-15).data) != key
    assert figure_key("coverage", _histograms(VALUES).data) != key
    with pytest.raises(TypeError, match="DataFrame"):
        figure_key("histograms", {"panels": pd.DataFrame({"value": VALUES})})


def test_figures_are_drawn_with_the_same_bytes_every_time(tmp_path: Path) -> None:
    first = render_figure(_coverage(0.9), tmp_path / "a.png", None)
    second = render_figure(_coverage(0.9), tmp_path / "b.png", None)
    assert not first.reused
    assert not second.reused
    assert first.key == second.key
    assert first.path.read_bytes() == second.path.read_bytes()
    assert b"Matplotlib" not in first.path.read_bytes()


def test_only_the_figure_whose_data_changed_is_drawn_again(tmp_path: Path) -> None:
    previous = _report(tmp_path / "previous", [_histograms(VALUES), _coverage(0.9)])
    reusable = previous_figures(previous)
    assert set(reusable) == {"histograms.png", "coverage.png"}
    out = tmp_path / "next"
    out.mkdir()
    rendered = render_figures([_histograms(VALUES), _coverage(0.8)], out, reusable)
    assert [item.reused for item in rendered] == [True, False]
    old = previous / FIGURES_DIR
    assert (out / "histograms.png").read_bytes() == (old / "histograms.png").read_bytes()
    assert (out / "coverage.png").read_bytes() != (old / "coverage.png").read_bytes()
    keys = json.loads((previous / KEYS_FILE).read_text())["figures"]
    assert rendered[0].key == keys["histograms.png"]
    assert rendered[1].key != keys["coverage.png"]


def test_a_damaged_previous_figure_is_drawn_again_not_reused(tmp_path: Path) -> None:
    previous = _report(tmp_path / "previous", [_histograms(VALUES), _coverage(0.9)])
    damaged = previous / FIGURES_DIR / "coverage.png"
    intact = damaged.read_bytes()
    damaged.write_bytes(intact[:-1] + bytes([intact[-1] ^ 1]))
    out = tmp_path / "next"
    out.mkdir()
    rendered = render_figures(
        [_histograms(VALUES), _coverage(0.9)], out, previous_figures(previous)
    )
    assert [item.reused for item in rendered] == [True, False]
    assert (out / "coverage.png").read_bytes() == intact


def test_nothing_is_reused_when_the_recorded_keys_do_not_match_the_manifest(
    tmp_path: Path,
) -> None:
    previous = _report(tmp_path / "previous", [_histograms(VALUES)])
    keys = previous / KEYS_FILE
    stored = json.loads(keys.read_text())
    stored["figures"]["histograms.png"] = figure_key("histograms", _histograms(VALUES * 2).data)
    keys.write_text(json.dumps(stored))
    assert previous_figures(previous) == {}
    (previous / "SHA256SUMS").unlink()
    assert previous_figures(previous) == {}
    assert previous_figures(None) == {}
