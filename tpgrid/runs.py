"""Pipeline runs: plateau → cube → fit → predict → publish (+ report), recomputing only what
changed, with one record per run.

Every step is incremental on its own, keyed by content hashes:

- **cube**: a layer whose source fingerprint is unchanged is carried over; a changed one is
  recomputed and only chunks whose content hash changed are rewritten (:mod:`tpgrid.cube`);
- **fit**: an element is refitted only when its training table (site values and the cube
  values at the sites) or the fit settings changed (:func:`tpgrid.fit.fit_models`); one
  that can no longer be fitted (too few sites) is dropped with its model, or with
  ``fit_failures: fail`` fails the run;
- **predict**: only element chunks whose inputs (model hash, cube chunk hashes) changed are
  predicted; a killed run resumes from its done markers (:func:`tpgrid.predict.predict_cube`);
- **publish**: a new version is written only for a new prediction run (or when a file of the
  current one is damaged), complete with its report, and made current atomically
  (:mod:`tpgrid.publication`).

Records go to ``workdir/runs/<id>.json``: what changed, what was recomputed, timings, versions.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tpgrid import __version__
from tpgrid.artifact import MODEL_FILE
from tpgrid.config import PipelineConfig, WorkdirLayout, check_workdir
from tpgrid.cube import build_cube, plan_cube
from tpgrid.errors import FitError, StorageError
from tpgrid.fit import FitReport, fit_models
from tpgrid.grid import TargetGrid
from tpgrid.memory import PeakMemoryMeter
from tpgrid.outputs import open_prediction, published_run
from tpgrid.predict import load_models, predict_cube
from tpgrid.publication import (
    REPORT_DIR,
    Publication,
    current_version,
    publish_version,
    verify_version,
)
from tpgrid.report import write_report
from tpgrid.sources import load_catalog
from tpgrid.synthetic import plateau_files, reuse_or_write_plateau
from tpgrid.tasks import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One step of a run (or of a plan): what it did or would do, and why."""

    name: str
    action: str  # "unchanged", "updated", "new" — or, in a plan, "would update"/"would build"
    detail: str
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    #: what the step found damaged in what it carries over, and how it repaired it
    repairs: tuple[str, ...] = ()
    #: what the user should know about the step's results (e.g. a model worse than the mean)
    warnings: tuple[str, ...] = ()
    #: peak resident memory during the step, MiB: of this process, and of the highest worker
    #: (None: no Dask worker was there at the step's end)
    peak_process_mib: float | None = None
    peak_worker_mib: float | None = None


@dataclass(frozen=True)
class RunRecord:
    """A run as recorded in ``runs/<id>.json``."""

    id: str
    pipeline: str
    started: str
    finished: str
    status: str  # "ok" or "failed: ..."
    changed: bool  # did any published output change
    steps: tuple[Step, ...]
    published: str | None
    versions: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- dry run -------------------------------------------------------------------------------


def plan(config: PipelineConfig) -> list[Step]:
    """What a run would recompute, and why, without computing or writing anything.

    A step whose inputs would change upstream is reported as depending on them: its exact
    extent is only known once they are rebuilt. Inputs that are missing or wrong are not a
    change: :func:`tpgrid.preflight.check_pipeline` names them (`tpgrid run --dry-run` calls it
    first).
    """
    steps: list[Step] = []
    if config.synthetic is not None and not _plateau_ready(config):
        steps.append(Step("plateau", "would build", f"synthetic plateau into {config.plateau_dir}"))
        steps.append(Step("cube", "would update", "every layer whose new source differs"))
        steps += _downstream_of_change("the cube")
        return steps
    cube_plan = plan_cube(
        load_catalog(config.catalog_path),
        TargetGrid.from_spec(config.grid_spec()),
        config.cube_path,
    )
    by_action: dict[str, list[str]] = {}
    for name, what in sorted(cube_plan.items()):
        if what != "unchanged":
            by_action.setdefault(what, []).append(name)
    if by_action:
        why = {"new": "new layers", "changed": "sources changed", "damaged": "chunk files damaged"}
        detail = "; ".join(f"{why[what]}: {', '.join(names)}" for what, names in by_action.items())
        steps.append(Step("cube", "would update", detail))
        steps += _downstream_of_change("the cube")
        return steps
    steps.append(Step("cube", "unchanged", "every source fingerprint matches the cube"))
    fit = _fit(config, dry_run=True)
    unfit = _unfit(config, fit)
    present = {e: why for e, why in unfit.items() if (config.models_dir / e).exists()}
    if fit.pending or present:
        changes = []
        if fit.pending:
            changes.append(f"training table or settings changed: {', '.join(fit.pending)}")
        if present:
            failing = config.fit_failures == "fail" and any(
                s.element in present for s in fit.skipped
            )
            verb = "would fail on" if failing else "would drop"
            changes.append(_unfit_detail(present, verb))
        steps.append(Step("fit", "would update", "; ".join(changes)))
        steps += _downstream_of_change("the models")[1:]
        return steps
    steps.append(Step("fit", "unchanged", "every element's training table and settings match"))
    prediction = predict_cube(
        config.cube_path,
        load_models(config.models_dir),
        config.prediction_path,
        options=config.predict.options(),
        overwrite=True,  # the pipeline's own: see _run_steps
        dry_run=True,
    )
    if prediction.chunks_computed:
        detail = f"{prediction.chunks_computed} of {prediction.chunks_total} element chunks"
        steps.append(Step("predict", "would update", detail))
        steps.append(Step("publish", "would update", "a new version for the new prediction"))
        return steps
    steps.append(Step("predict", "unchanged", "every chunk's inputs match the prediction"))
    steps.append(_publish_plan(config))
    return steps


def plan_changes(steps: list[Step]) -> bool:
    """Whether a plan would change anything."""
    return any(step.action != "unchanged" for step in steps)


def _plateau_ready(config: PipelineConfig) -> bool:
    assert config.synthetic is not None
    truth = plateau_files(config.plateau_dir).truth_json
    if not truth.is_file():
        return False
    doc = json.loads(truth.read_text())
    return bool(
        doc.get("size") == config.synthetic.size and doc.get("seed") == config.synthetic.seed
    )


def _downstream_of_change(what: str) -> list[Step]:
    return [
        Step("fit", "would update", f"elements whose training table changes with {what}"),
        Step("predict", "would update", f"chunks whose inputs change with {what}"),
        Step("publish", "would update", "a new version if the prediction changes"),
    ]


def _publish_plan(config: PipelineConfig) -> Step:
    current = current_version(config.published_dir)
    if current is None:
        return Step("publish", "would update", "nothing published yet")
    _, run = open_prediction(config.prediction_path)
    if published_run(current) != run["run_id"]:  # e.g. a run killed while publishing
        return Step("publish", "would update", "the current version is of an older prediction")
    damage = verify_version(current)
    if damage:
        detail = f"{len(damage)} damaged file(s) in {current.name}, e.g. {damage[0]}"
        return Step("publish", "would update", detail)
    return Step("publish", "unchanged", f"current version {current.name}, every file intact")


# --- a run ---------------------------------------------------------------------------------


def run_pipeline(config: PipelineConfig, *, progress: Progress | None = None) -> RunRecord:
    """Run the pipeline on the current Dask client and record it (also when it fails).

    A workdir that cannot hold the run (a file in the way, a read-only file system) is a
    :class:`StorageError` before anything is done. A step's error is what a failed run raises,
    even when its record cannot be written then (that is logged as a warning).
    """
    check_workdir(config.workdir)
    try:
        config.runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError.from_os_error(exc, config.runs_dir) from exc
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    steps: list[Step] = []

    def record(status: str, published: str | None = None) -> RunRecord:
        return RunRecord(
            id=run_id,
            pipeline=config.name,
            started=started,
            finished=datetime.now(UTC).isoformat(timespec="seconds"),
            status=status,
            changed=any(s.action != "unchanged" for s in steps),
            steps=tuple(steps),
            published=published,
            versions={"tpgrid": __version__, "python": platform.python_version()},
        )

    try:
        published = _run_steps(config, steps, progress)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "interrupted" if interrupted else f"failed: {type(exc).__name__}: {exc}"
        try:
            _write_record(config, record(status))
        except StorageError as failed:
            log.warning("the run record was not written: %s", failed)
        raise
    done = record("ok", published)
    _write_record(config, done)
    return done


def _run_steps(config: PipelineConfig, steps: list[Step], progress: Progress | None) -> str:
    """Every step in order, appending to ``steps``; returns the current published version."""
    if config.synthetic is not None:
        with _timed(steps, "plateau") as note:
            ready = _plateau_ready(config)
            reuse_or_write_plateau(
                config.plateau_dir, config.synthetic.size, config.synthetic.seed, overwrite=True
            )
            note("unchanged" if ready else "new", f"synthetic plateau in {config.plateau_dir}")

    with _timed(steps, "cube") as note:
        catalog = load_catalog(config.catalog_path)
        grid = TargetGrid.from_spec(config.grid_spec())
        cube = build_cube(
            catalog,
            grid,
            config.cube_path,
            # The workdir's cube is the pipeline's own, under its lock: a changed grid replaces
            # it (no --overwrite to ask for: `tpgrid run` has none).
            overwrite=True,
            progress=_labelled(progress, "cube"),
        )
        written = {u.name: u.chunks_written for u in cube.layers if u.chunks_written}
        detail = (
            "chunks rewritten: " + ", ".join(f"{k} {v}" for k, v in written.items())
            if written
            else "no chunk changed"
        )
        note(
            "updated" if written else "unchanged",
            detail,
            written,
            repairs=[str(damage) for damage in cube.repaired],
        )

    with _timed(steps, "fit") as note:
        fit = _fit(config, progress=_labelled(progress, "fit"))
        unfit = _unfit(config, fit)
        too_few = {s.element: s.reason for s in fit.skipped}
        if too_few and config.fit_failures == "fail":
            raise FitError(
                _unfit_detail(too_few, "cannot fit")
                + " (the pipeline's fit_failures is 'fail'; 'drop' publishes the others)"
            )
        # Their old models and maps are not science any more: removed, not published again.
        dropped = _drop_models(config, unfit)
        refitted = [f.element for f in fit.fitted]
        kept = [f.element for f in fit.unchanged]
        detail = f"refitted {refitted or 'none'}; kept {kept or 'none'}"
        if unfit:
            detail += "; " + _unfit_detail(unfit, "dropped")
        note(
            "updated" if refitted or dropped else "unchanged",
            detail,
            {"refitted": len(refitted)} | ({"dropped": len(dropped)} if dropped else {}),
            repairs=[f"model {element}: {why}; fitted again" for element, why in fit.repaired],
            warnings=fit.warnings,
        )

    with _timed(steps, "predict") as note:
        models = load_models(config.models_dir)
        prediction = predict_cube(
            config.cube_path,
            models,
            config.prediction_path,
            options=config.predict.options(),
            # The workdir's prediction is the pipeline's own, under its lock: elements it
            # dropped go with it, and a changed grid replaces it.
            overwrite=True,
            progress=_labelled(progress, "predict"),
        )
        detail = f"{prediction.chunks_computed} of {prediction.chunks_total} element chunks"
        note(
            "unchanged" if prediction.up_to_date else "updated",
            detail,
            {"chunks_computed": prediction.chunks_computed},
            repairs=[str(damage) for damage in prediction.repaired],
        )

    with _timed(steps, "publish") as note:
        # The version current before this one: its report's figures drawn from unchanged data
        # are reused (checked against its SHA256SUMS) instead of drawn again.
        previous = current_version(config.published_dir)

        def add_report(folder: Path) -> None:
            write_report(
                config.models_dir,
                folder,
                cube=config.cube_path,
                sites=config.site_source,
                prediction=config.prediction_path,
                settings=config.report,
                not_mapped=unfit,
                progress=_labelled(progress, "report"),
                previous=None if previous is None else previous / REPORT_DIR,
                truth=config.truth_files,
            )

        publication = publish_version(
            config.prediction_path,
            config.published_dir,
            report=add_report if config.report.enabled else None,
            progress=_labelled(progress, "publish"),
        )
        note("new" if publication.new else "unchanged", *_published(publication))
    return publication.version


def _unfit(config: PipelineConfig, fit: FitReport) -> dict[str, str]:
    """Elements that cannot be mapped now, with the reason: too few sites, or no longer among
    the fit's elements (as resolved against the site table) while an old model of them is
    still there."""
    unfit = {skipped.element: skipped.reason for skipped in fit.skipped}
    if config.models_dir.is_dir():
        for path in sorted(config.models_dir.glob(f"*/{MODEL_FILE}")):
            element = path.parent.name
            if element not in fit.elements and not element.startswith("."):
                unfit[element] = (
                    "no longer in the pipeline's fit.elements (or, with fit.elements unset, "
                    "no longer a column of the site table)"
                )
    return unfit


def _unfit_detail(unfit: dict[str, str], verb: str) -> str:
    return "; ".join(f"{verb} {element}: {reason}" for element, reason in unfit.items())


def _drop_models(config: PipelineConfig, unfit: dict[str, str]) -> list[str]:
    """Remove the model directories of ``unfit`` elements; the elements that had one."""
    dropped = []
    for element in unfit:
        directory = config.models_dir / element
        if not directory.exists():
            continue
        # The artifact first: from then on no model of the element is found, even if the run
        # is killed before the rest of its directory is gone.
        (directory / MODEL_FILE).unlink(missing_ok=True)
        shutil.rmtree(directory)
        log.warning("%s: model removed from %s (%s)", element, config.models_dir, unfit[element])
        dropped.append(element)
    return dropped


def _published(publication: Publication) -> tuple[str, dict[str, int]]:
    """The publish step's detail and counts."""
    detail = f"version {publication.version}" + (" (now current)" if publication.new else "")
    counts = {"elements_kept": len(publication.reused)}
    if publication.reused:
        detail += f"; maps of {list(publication.reused)} kept"
    if publication.damaged:
        files = ", ".join(f"{d.path.name} ({d.problem})" for d in publication.damaged)
        detail += f"; re-rendered {len(publication.damaged)} damaged file(s): {files}"
        counts["files_repaired"] = len(publication.damaged)
    if publication.removed:
        detail += f"; removed {len(publication.removed)} unfinished version(s) of killed runs"
        counts["unfinished_removed"] = len(publication.removed)
    return detail, counts


def _fit(config: PipelineConfig, **options: Any) -> FitReport:
    """Fit (or with ``dry_run=True``, plan to fit) the elements whose inputs changed."""
    return fit_models(
        config.site_source,
        config.cube_path,
        config.models_dir,
        config.fit,
        reuse_unchanged=True,
        **options,
    )


def _labelled(progress: Progress | None, step: str) -> Progress | None:
    """The step's name before each progress label, so bars of different steps stay apart."""
    if progress is None:
        return None
    report = progress
    return lambda label, done, total: report(f"{step} {label}", done, total)


@contextmanager
def _timed(steps: list[Step], name: str) -> Iterator[Callable[..., None]]:
    """Time one step; the body calls ``note(action, detail, counts, repairs=..., warnings=...)``
    once."""
    started = time.perf_counter()
    memory = PeakMemoryMeter()
    noted: dict[str, Any] = {}

    def note(
        action: str,
        detail: str,
        counts: dict[str, int] | None = None,
        *,
        repairs: Sequence[str] = (),
        warnings: Sequence[str] = (),
    ) -> None:
        noted.update(
            action=action,
            detail=detail,
            counts=counts or {},
            repairs=tuple(repairs),
            warnings=tuple(warnings),
        )

    yield note
    seconds = round(time.perf_counter() - started, 2)
    peak = memory.read()
    steps.append(
        Step(
            name,
            noted["action"],
            noted["detail"],
            seconds,
            noted["counts"],
            noted["repairs"],
            noted["warnings"],
            peak.process_mib,
            peak.highest_worker_mib,
        )
    )
    log.info("%s: %s (%s) in %.1f s", name, noted["action"], noted["detail"], seconds)


# --- records -------------------------------------------------------------------------------


def _write_record(config: PipelineConfig, record: RunRecord) -> None:
    path = config.runs_dir / f"{record.id}.json"
    partial = path.with_name(f".{path.name}.partial")
    try:
        config.runs_dir.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(record.to_json(), indent=2) + "\n")
        partial.rename(path)
    except OSError as exc:
        with suppress(OSError):
            partial.unlink(missing_ok=True)
        raise StorageError.from_os_error(exc, path) from exc


def list_runs(pipeline: PipelineConfig | Path) -> list[dict[str, Any]]:
    """Every recorded run of a pipeline, given by its config or its working directory, oldest
    first."""
    workdir = pipeline.workdir if isinstance(pipeline, PipelineConfig) else Path(pipeline)
    runs_dir = WorkdirLayout(workdir).runs
    if not runs_dir.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]
