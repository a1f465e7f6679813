"""Every config and input problem of a pipeline, found before a cluster starts.

A run used to meet its inputs one step at a time: a wrong site column was found by the fit,
after the cube had been built on a cluster. :func:`check_pipeline` looks at all of them first —
the grid builds and its mask exists, every catalog layer opens, has a CRS and the band asked
for and overlaps the grid (headers only, no pixels), the site table reads and has the columns
the fit needs — and raises one :class:`~tpgrid.errors.ConfigError` listing every problem, each
naming the file or key and the fix. :func:`check_catalog` does the same for `tpgrid cube`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

from tpgrid.config import PipelineConfig
from tpgrid.errors import ConfigError, TpgridError
from tpgrid.fit import read_fit_sites
from tpgrid.grid import TargetGrid
from tpgrid.sources import Catalog, check_overlap, load_catalog, open_layer
from tpgrid.synthetic import plateau_files

#: The fix for a workdir holding another synthetic plateau, for a pipeline given as a YAML.
WORKDIR_KEY_FIX = "set 'workdir' in the pipeline YAML to a new directory"
T = TypeVar("T")


#: A problem: the input it is about (the grid, the catalog, the sites, the workdir) and its message.
Problem = tuple[str, str]


def check_pipeline(config: PipelineConfig, *, workdir_fix: str = WORKDIR_KEY_FIX) -> None:
    """Raise one :class:`ConfigError` listing every problem with ``config``'s inputs.

    A synthetic pipeline whose workdir holds a plateau of another size or seed is refused
    (``workdir_fix`` says what to do): the run would rewrite that plateau and everything built
    from it. Its inputs are otherwise the run's own, written by it, and not checked here.
    """
    problems = pipeline_problems(config, workdir_fix=workdir_fix)
    if problems:
        raise ConfigError(_listing(f"pipeline {config.name}", problems))


def pipeline_problems(
    config: PipelineConfig, *, workdir_fix: str = WORKDIR_KEY_FIX
) -> list[Problem]:
    """What :func:`check_pipeline` would report (empty: all is well)."""
    if config.synthetic is not None:
        return _plateau_problems(config, workdir_fix)
    problems: list[Problem] = []
    spec = _noted(problems, "grid", config.grid_spec)
    grid = _noted(problems, "grid", lambda: _built(TargetGrid.from_spec(spec))) if spec else None
    catalog = _noted(problems, "catalog", lambda: load_catalog(config.catalog_path))
    if catalog is not None:
        problems += _layer_problems(catalog, grid, f"catalog {config.catalog_path}")
    # The fit's own reading of the table: what passes here is what the fit reads.
    _noted(problems, "sites", lambda: read_fit_sites(config.site_source, config.fit))
    return problems


def check_catalog(catalog: Catalog, grid: TargetGrid) -> None:
    """Raise one :class:`ConfigError` listing every catalog layer that does not open or misses
    ``grid``, and a grid mask file that does not exist."""
    problems: list[Problem] = []
    checked = _noted(problems, "grid", lambda: _built(grid))
    problems += _layer_problems(catalog, checked, "catalog")
    if problems:
        raise ConfigError(_listing(f"the catalog in {catalog.base_dir}", problems))


def _built(grid: TargetGrid) -> TargetGrid:
    grid.mask_geometry()  # a mask file that is not there
    return grid


def _noted(problems: list[Problem], about: str, attempt: Callable[[], T]) -> T | None:
    """``attempt()``, or None with its error added to ``problems``."""
    try:
        return attempt()
    except TpgridError as exc:
        problems.append((about, str(exc)))
        return None


def _layer_problems(catalog: Catalog, grid: TargetGrid | None, about: str) -> list[Problem]:
    """Each layer opened lazily (headers only) and, when the grid builds, checked against it."""
    problems: list[Problem] = []
    for name in catalog.layers:
        try:
            data = open_layer(catalog, name)
            if grid is not None:
                check_overlap(name, data, grid)
        except TpgridError as exc:
            problems.append((about, str(exc)))
    return problems


def _plateau_problems(config: PipelineConfig, workdir_fix: str) -> list[Problem]:
    assert config.synthetic is not None
    truth = plateau_files(config.plateau_dir).truth_json
    if not truth.is_file():
        return []
    doc = json.loads(truth.read_text())
    wanted = {"size": config.synthetic.size, "seed": config.synthetic.seed}
    found = {key: doc.get(key) for key in wanted}
    if found == wanted:
        return []
    message = (
        f"{config.workdir} holds the synthetic plateau of size {found['size']!r}, seed "
        f"{found['seed']}, not size {wanted['size']!r}, seed {wanted['seed']}: a run would "
        f"rewrite it and everything built from it; {workdir_fix}"
    )
    return [("workdir", message)]


def _listing(what: str, problems: list[Problem]) -> str:
    """One message: how many problems with which input, then one line each."""
    counts: dict[str, int] = {}
    for about, _ in problems:
        counts[about] = counts.get(about, 0) + 1
    where = ", ".join(f"{n} with the {about}" for about, n in counts.items())
    lines = "\n".join(f"  - {about}: {message}" for about, message in problems)
    total = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
    return f"{total} in the inputs of {what} ({where}), found before anything was started:\n{lines}"
