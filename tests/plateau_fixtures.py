"""The small synthetic plateau and its cube, built once per test session (about 15 s).

Import the fixtures into a test module (``from tests.plateau_fixtures import ...``); tests
that damage them work on copies.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tpgrid.cube import build_cube
from tpgrid.grid import TargetGrid, load_grid_spec
from tpgrid.sources import load_catalog
from tpgrid.synthetic import PlateauFiles, write_plateau


@pytest.fixture(scope="session")
def plateau(tmp_path_factory: pytest.TempPathFactory) -> PlateauFiles:
    return write_plateau(tmp_path_factory.mktemp("plateau"), "small", seed=0)


@pytest.fixture(scope="session")
def cube_path(plateau: PlateauFiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cube") / "cube.zarr"
    grid = TargetGrid.from_spec(load_grid_spec(plateau.grid))
    build_cube(load_catalog(plateau.catalog), grid, path)
    return path
