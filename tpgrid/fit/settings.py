"""How the element models are fitted: the search grid and the fit settings, from YAML.

The settings are the one input of a fit besides the site table and the cube; every field that
shapes one element's model enters the hash that decides whether a kept model can be reused.
Three of them default to the data instead of to a region: ``elements`` (None: every element
column of the site table), ``calibrate`` ("auto": every element with ICP-MS values) and
``spatial_block_km`` (None: chosen from the sites and the prediction area, see
:mod:`tpgrid.fit.blocks`). :func:`read_fit_sites` reads the site table and resolves the first
two; the model records and hashes hold the resolved values, so a kept model is reused exactly
when what it was fitted with is what the settings resolve to now.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tpgrid.fit.elements import resolve_calibration
from tpgrid.fit.sites import ELEMENTS, ICPMS_SUFFIX, SiteSource, SiteTable, read_sites
from tpgrid.yamlfile import read_mapping, validated

#: Train on every screened sample, or on one mean per site.
TrainOn = Literal["samples", "site_means"]


class SearchGrid(BaseModel):
    """Hyperparameter values tried by the search (every combination is one candidate)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_features: tuple[float, ...] = Field(
        (0.33, 0.66), min_length=1, description="fraction of columns tried at each split"
    )
    min_samples_leaf: tuple[int, ...] = Field((1, 5), min_length=1)
    max_depth: tuple[int | None, ...] = Field((None,), min_length=1, description="None: no limit")

    @field_validator("max_features")
    @classmethod
    def _fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < v <= 1 for v in value):
            raise ValueError("max_features are fractions of the columns, in (0, 1]")
        return value

    @field_validator("min_samples_leaf")
    @classmethod
    def _leaves(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 1 for v in value):
            raise ValueError("min_samples_leaf must be at least 1")
        return value

    @field_validator("max_depth")
    @classmethod
    def _depths(cls, value: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if any(v is not None and v < 1 for v in value):
            raise ValueError("max_depth must be at least 1, or null for no limit")
        return value

    def candidates(self) -> list[dict[str, Any]]:
        """Every combination, as ``RandomForestRegressor`` keyword arguments."""
        return [
            {"max_features": f, "min_samples_leaf": leaf, "max_depth": depth}
            for f, leaf, depth in itertools.product(
                self.max_features, self.min_samples_leaf, self.max_depth
            )
        ]


class FitSettings(BaseModel):
    """How the element models are fitted (YAML-friendly, validated, frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    elements: tuple[str, ...] | None = Field(
        None, min_length=1, description="None: every element column of the site table"
    )
    n_trees: int = Field(500, ge=1, description="trees of the final forest")
    search_trees: int = Field(
        100, ge=1, description="trees of every search and CV forest: cost control"
    )
    search_grid: SearchGrid = SearchGrid()
    cv_folds: int = Field(10, ge=2)
    spatial_block_km: float | None = Field(
        None,
        gt=0,
        description=(
            "edge of the spatial CV blocks; None: the edge whose CV distances best match the "
            "distances from the prediction area to the sites (tpgrid.fit.blocks)"
        ),
    )
    screening_sd: float | None = Field(
        3.0, gt=0, description="remove values outside mean ± this many SD; null: no screening"
    )
    calibrate: Literal["auto"] | tuple[str, ...] = Field(
        "auto",
        description=(
            "elements calibrated from XRF to ICP-MS; auto: every element whose <E>_icpms "
            "column has values; []: none"
        ),
    )
    train_on: TrainOn = "samples"
    importance_repeats: int = Field(
        3, ge=1, description="shuffles per predictor for %IncMSE (on the grouped CV's folds)"
    )
    interval_level: float = Field(
        0.9,
        gt=0.5,
        lt=1,
        description=(
            "nominal coverage of the published prediction interval, calibrated on the grouped "
            "and spatial CVs' held-out sites per DI bin"
        ),
    )
    seed: int = Field(0, ge=0, description="seed of the folds, the forests and the shuffles")

    @field_validator("elements")
    @classmethod
    def _distinct(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"an element is listed twice: {list(value)}")
        return value


#: The paper's settings on the Tibetan Plateau (tibet_1km.yaml, synthetic_1km.yaml): its seven
#: elements, Zn and Ni calibrated to ICP-MS, 100 km spatial CV blocks.
PLATEAU_FIT = FitSettings(elements=ELEMENTS, calibrate=("Zn", "Ni"), spatial_block_km=100.0)


@dataclass(frozen=True, eq=False)
class FitSites:
    """The site table as the fit reads it, and the settings resolved against it: ``elements``
    and ``calibrate`` are the lists the fit uses (also in ``settings``)."""

    table: SiteTable
    settings: FitSettings
    elements: tuple[str, ...]
    calibrate: tuple[str, ...]


def read_fit_sites(sites: SiteSource | str | Path, settings: FitSettings) -> FitSites:
    """Read the site table and resolve ``settings`` against it: the one place a fit (a run,
    its dry run, a check before it) learns its elements and calibrated elements.

    Raises :class:`SiteTableError` naming the file, and the settings key where one is to blame.
    """
    table = read_sites(sites, settings.elements)
    elements, frame = table.elements, table.frame
    with_icpms = [
        e for e in elements if e + ICPMS_SUFFIX in frame and frame[e + ICPMS_SUFFIX].notna().any()
    ]
    calibrate = resolve_calibration(settings.calibrate, elements, with_icpms, table.path)
    resolved = settings.model_copy(update={"elements": elements, "calibrate": calibrate})
    return FitSites(table, resolved, elements, calibrate)


def load_fit_settings(path: str | Path) -> FitSettings:
    """Read fit settings from YAML, naming the file in any error."""
    data = read_mapping(path, "fit settings file", "pass the path of a YAML")
    return validated(FitSettings.model_validate, data, f"fit settings file {path}")


def fit_settings(path: str | Path | None, overrides: Mapping[str, Any]) -> FitSettings:
    """Settings from a YAML file (or the defaults) with ``overrides`` on top; raises
    :class:`ConfigError` naming what is wrong."""
    base = load_fit_settings(path) if path is not None else FitSettings()
    return validated(
        FitSettings.model_validate, base.model_dump() | dict(overrides), "fit settings"
    )
