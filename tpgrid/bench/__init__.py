"""Prediction-throughput benchmark: tpgrid against the engines users would pick instead.

Six sections, each returning plain data (:func:`run_benchmark` runs them in turn and
:func:`write_report` writes a JSON result, a markdown table and a PNG plot):

1. **Kernel** (:mod:`~tpgrid.bench.kernel`): one forest, the same float32 rows and the same
   number of threads for every engine (:mod:`~tpgrid.bench.engines`) — tpgrid (mean +
   variance), scikit-learn ``predict`` (mean), a loop over scikit-learn's trees (mean +
   variance), ONNX Runtime via skl2onnx (mean), treelite's GTIL (mean, and per tree). Every
   engine's output is checked against numpy's mean and variance of scikit-learn's per-tree
   predictions before it is timed; an engine that disagrees is refused
   (:class:`~tpgrid.errors.EngineMismatchError`). Engines whose package is missing are skipped
   and named. Rows come in two kinds: whole cube chunks in raster order (spatially coherent, as
   the prediction sees them) and valid pixels drawn at random over the plateau (worst case).
2. **Uncertainty layers** (:mod:`~tpgrid.bench.uncertainty`): on the kernel section's forest
   and rows, tpgrid's mean + variance beside its quantiles and its standard error (per-tree
   predictions + infinitesimal jackknife), and quantile-forest and forestci on the same trees,
   each checked equal to tpgrid's answer before it is timed (on fewer rows: they are slow).
3. **Scaling** (:mod:`~tpgrid.bench.scaling`): the whole prediction
   (:func:`tpgrid.predict.predict_cube`) on a LocalCluster of 1 and 2 single-threaded workers,
   for cubes chunked from 256² to 2048², with each run's peak worker memory.
4. **End to end** (:mod:`~tpgrid.bench.end_to_end`): every element over the full plateau, with
   the task time and the bare kernel time (same chunks, same parallelism, no Dask, no I/O)
   beside the wall time, so the cluster's overhead shows apart from the kernel.
5. **End-to-end job** (:mod:`~tpgrid.bench.job`): ``tpgrid demo`` as a user runs it, as
   separate processes: the small demo's first run, a no-op re-run, a re-run after a one-window
   covariate change, and the full plateau's job (and, when named, the full plateau at 250 m);
   each step's peak worker memory beside its seconds; optionally beside a baseline install.
6. **The Dask user's alternative** (:mod:`~tpgrid.bench.alternatives`): on the end-to-end
   section's cube, forests and cluster, tpgrid's prediction beside dask-ml's ``ParallelPostFit``
   and an ``xarray.apply_ufunc`` loop over scikit-learn's trees, each checked equal to tpgrid's
   output, with wall time, peak worker memory and the bytes sent to the workers.

The forests are those :func:`tpgrid.fit.fit_models` fits on the synthetic plateau (500 trees
per element, hyperparameters as its search picks them), so tree depth is what users get.
Everything derives from one seed; the plateau, cubes and models are kept in a work directory
and reused by later runs (:mod:`~tpgrid.bench.inputs`). ``forest="reference"`` times a fixed
reference forest on synthetic rows instead (kernel and uncertainty only). Timings are
best-of-``repeats`` wall times, engines taking turns within each repeat so that other work on
the machine hits them alike; the spread is reported. :mod:`~tpgrid.bench.result` derives the
targets and whether each is met; :mod:`~tpgrid.bench.report` writes them out.
"""

from tpgrid.bench.alternatives import AlternativeRun, AlternativesResult, alternatives_benchmark
from tpgrid.bench.end_to_end import EndToEndResult, end_to_end_benchmark
from tpgrid.bench.engines import EXACT, FLOAT32, Engine, check_engine, reference_prediction
from tpgrid.bench.job import JobRun, job_benchmark
from tpgrid.bench.kernel import EngineTiming, KernelResult, RowsResult, kernel_benchmark
from tpgrid.bench.report import ReportFiles, markdown, write_report
from tpgrid.bench.result import BenchResult, Target, kernel_rows, targets
from tpgrid.bench.run import TimedForest, run_benchmark, timed_forest
from tpgrid.bench.scaling import ScalingRun, scaling_benchmark
from tpgrid.bench.settings import (
    DEFAULT_JOB_CASES,
    DEFAULT_SECTIONS,
    JOB_CASES,
    SECTIONS,
    BenchSettings,
)
from tpgrid.bench.uncertainty import (
    QUANTILES,
    LayerEngine,
    LayerTiming,
    UncertaintyResult,
    UncertaintyRows,
    quantile_forest_on,
    uncertainty_benchmark,
)

__all__ = [
    "DEFAULT_JOB_CASES",
    "DEFAULT_SECTIONS",
    "EXACT",
    "FLOAT32",
    "JOB_CASES",
    "QUANTILES",
    "SECTIONS",
    "AlternativeRun",
    "AlternativesResult",
    "BenchResult",
    "BenchSettings",
    "EndToEndResult",
    "Engine",
    "EngineTiming",
    "JobRun",
    "KernelResult",
    "LayerEngine",
    "LayerTiming",
    "ReportFiles",
    "RowsResult",
    "ScalingRun",
    "Target",
    "TimedForest",
    "UncertaintyResult",
    "UncertaintyRows",
    "alternatives_benchmark",
    "check_engine",
    "end_to_end_benchmark",
    "job_benchmark",
    "kernel_benchmark",
    "kernel_rows",
    "markdown",
    "quantile_forest_on",
    "reference_prediction",
    "run_benchmark",
    "scaling_benchmark",
    "targets",
    "timed_forest",
    "uncertainty_benchmark",
    "write_report",
]
