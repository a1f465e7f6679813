"""The whole benchmark: the sections the settings name, in turn, and the machine they ran on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tpgrid.artifact import ModelArtifact, load_estimator
from tpgrid.bench.alternatives import alternatives_benchmark
from tpgrid.bench.end_to_end import end_to_end_benchmark
from tpgrid.bench.inputs import (
    PlateauInputs,
    build_reference_forest,
    coherent_rows,
    plateau_pixels,
    prepare_plateau,
    random_rows,
    reference_training,
    training_rows,
)
from tpgrid.bench.job import job_benchmark
from tpgrid.bench.kernel import kernel_benchmark
from tpgrid.bench.result import BenchResult
from tpgrid.bench.scaling import ScalingRun, scaling_benchmark
from tpgrid.bench.settings import BenchSettings, Log
from tpgrid.bench.uncertainty import uncertainty_benchmark
from tpgrid.core.arrays import F32, F64
from tpgrid.cube import cube_grid
from tpgrid.errors import ConfigError


def run_benchmark(settings: BenchSettings, log: Log = lambda _: None) -> BenchResult:
    """Run the sections of ``settings`` in turn; see :mod:`tpgrid.bench`."""
    load_before = os.getloadavg()
    kernel = None
    uncertainty = None
    inputs = None
    if settings.forest == "plateau" and set(settings.sections) - {"end_to_end_job"}:
        inputs = prepare_plateau(settings.workdir, settings.size, settings.seed, log)
    if {"kernel", "uncertainty"} & set(settings.sections):
        timed = timed_forest(settings, inputs)
    if "kernel" in settings.sections:
        kernel = kernel_benchmark(
            timed.estimator,
            timed.pixels,
            threads=settings.threads,
            repeats=settings.repeats,
            log=log,
        )
    if "uncertainty" in settings.sections:
        uncertainty = uncertainty_benchmark(
            timed.estimator,
            timed.X_train,
            timed.y_train,
            timed.pixels,
            threads=settings.threads,
            repeats=settings.repeats,
            rows_reference=settings.rows_reference,
            log=log,
        )
    scaling: list[ScalingRun] = []
    end_to_end = None
    if inputs is not None and "scaling" in settings.sections:
        chunk = cube_grid(inputs.cube).spec.chunk
        chunks = settings.chunks or (chunk // 2, chunk, 2 * chunk, 4 * chunk)
        scaling = scaling_benchmark(settings.workdir, inputs, chunks, settings.workers, log)
    if inputs is not None and "end_to_end" in settings.sections:
        end_to_end = end_to_end_benchmark(inputs, settings.workdir, max(settings.workers), log)
    alternatives = None
    if inputs is not None and "alternatives" in settings.sections:
        estimators = {
            m.element: load_estimator(inputs.model_dir / m.element) for m in inputs.models
        }
        alternatives = alternatives_benchmark(
            inputs.cube, inputs.models, estimators, settings.workdir, max(settings.workers), log
        )
    job = []
    if "end_to_end_job" in settings.sections:
        job = job_benchmark(
            settings.workdir, settings.baseline, settings.job_cases, settings.seed, log
        )
    machine = machine_info() | {
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    chosen = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}
    return BenchResult(chosen, machine, kernel, scaling, end_to_end, job, uncertainty, alternatives)


@dataclass(frozen=True)
class TimedForest:
    """The forest the kernel and uncertainty sections time, what it was fitted on, and the
    rows it is timed on (kind → float32 X)."""

    estimator: Any
    X_train: F32
    y_train: F64
    pixels: dict[str, F32]


def timed_forest(settings: BenchSettings, inputs: PlateauInputs | None) -> TimedForest:
    """The reference forest and its synthetic rows, or (``inputs`` given) the plateau model of
    ``settings.element`` and rows of its cube."""
    if settings.forest == "reference":
        estimator = build_reference_forest(seed=settings.seed, n_jobs=settings.threads)
        n_features = estimator.n_features_in_
        pixels = {
            "coherent": coherent_rows(settings.rows, n_features, settings.seed),
            "random": random_rows(settings.rows, n_features, settings.seed),
        }
        return TimedForest(estimator, *reference_training(seed=settings.seed), pixels)
    if inputs is None:
        raise ValueError("the plateau forest needs the plateau's inputs")
    model = _model_of(inputs, settings.element)
    directory = inputs.model_dir / settings.element
    pixels = plateau_pixels(inputs.cube, model, settings.rows, settings.seed)
    return TimedForest(load_estimator(directory), *training_rows(directory, model), pixels)


def _model_of(inputs: PlateauInputs, element: str) -> ModelArtifact:
    for model in inputs.models:
        if model.element == element:
            return model
    fitted = [m.element for m in inputs.models]
    raise ConfigError(f"no model for element {element!r}: the plateau's models are {fitted}")


def machine_info() -> dict[str, Any]:
    """CPU, cores and the versions of everything timed."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    versions: dict[str, str | None] = {}
    for package in ("tpgrid", "numba", "numpy", "scikit-learn", "onnxruntime", "skl2onnx",
                    "treelite", "quantile-forest", "forestci", "dask", "distributed", "dask-ml",
                    "xarray"):  # fmt: skip
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()} | {
        "versions": versions
    }
