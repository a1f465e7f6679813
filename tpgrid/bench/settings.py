"""What a benchmark run measures and where it keeps its inputs, and the types every section shares.

A bad choice (an unknown section, a forest that is neither kind) is refused as the settings are
made, before anything is built or timed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tpgrid.errors import ConfigError

Log = Callable[[str], None]

SECTIONS = ("kernel", "uncertainty", "scaling", "end_to_end", "end_to_end_job", "alternatives")
#: What runs when no section is named: all but the uncertainty section, which takes minutes at
#: the default rows (its per-tree predictions and the libraries it compares with are slow), and
#: the alternatives section, whose scikit-learn engines take minutes on the full plateau.
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in ("uncertainty", "alternatives"))
#: The end_to_end_job section's cases (see :mod:`tpgrid.bench.job`); the last, the full plateau
#: at 250 m, runs only when named: it takes many minutes.
JOB_CASES = (
    "small, first run",
    "small, no-op re-run",
    "small, one-window re-run",
    "full, first run",
    "full 250 m, first run",
)
DEFAULT_JOB_CASES = JOB_CASES[:-1]


@dataclass(frozen=True)
class BenchSettings:
    """What :func:`run_benchmark` measures, and where it keeps its inputs."""

    workdir: Path
    size: str = "full"
    seed: int = 0
    forest: str = "plateau"  # or "reference": a fixed forest on synthetic rows
    element: str = "Fe"
    rows: int = 100_000
    rows_reference: int = 2000  # rows quantile-forest and forestci are timed on (uncertainty)
    threads: int = 2
    repeats: int = 5
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    chunks: tuple[int, ...] | None = None  # default: the grid's chunk / 2, x1, x2, x4
    workers: tuple[int, ...] = (1, 2)
    baseline: Path | None = None  # another install's tpgrid executable, for the job section
    job_cases: tuple[str, ...] = DEFAULT_JOB_CASES

    def __post_init__(self) -> None:
        unknown = set(self.sections) - set(SECTIONS)
        if unknown:
            raise ConfigError(
                f"unknown benchmark sections {sorted(unknown)}: choose from {SECTIONS}"
            )
        if self.forest not in ("plateau", "reference"):
            raise ConfigError(f"forest {self.forest!r} is not 'plateau' or 'reference'")
        unknown_cases = sorted(set(self.job_cases) - set(JOB_CASES))
        if unknown_cases:
            raise ConfigError(f"unknown job cases {unknown_cases}: choose from {list(JOB_CASES)}")
        if self.baseline is not None and "end_to_end_job" not in self.sections:
            raise ConfigError("a baseline is compared in the end_to_end_job section only")
        if self.forest == "reference" and set(self.sections) - {"kernel", "uncertainty"}:
            raise ConfigError(
                "the reference forest has no plateau: run only the kernel and uncertainty sections"
            )
        if self.rows_reference < 1:
            raise ConfigError(f"rows_reference must be at least 1, not {self.rows_reference}")
