"""The command line's first hour: help, errors before a cluster starts, output that fits."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from tests.plateau_fixtures import cube_path, plateau  # noqa: F401  (fixtures)
from tpgrid.cli import app
from tpgrid.cli.common import chunk_progress
from tpgrid.runs import RunRecord, Step
from tpgrid.sources import load_catalog
from tpgrid.synthetic import PlateauFiles

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["synth", "cube", "demo", "run", "verify", "runs", "fit", "predict", "report", "bench"]
#: Printed by the CLI once a Dask client is open: its absence means no cluster was started.
DASHBOARD_LINE = "Dask dashboard:"


def tpgrid(
    *args: str, cwd: Path | None = None, columns: int = 100
) -> subprocess.CompletedProcess[str]:
    """A real `tpgrid` process, as a user's shell would start it."""
    env = os.environ | {"COLUMNS": str(columns), "TERM": "dumb"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "tpgrid", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line(text: str) -> str:
    return " ".join(text.split())


# --- help ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_bool_after_flags_and_names_arguments_plainly(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage
    assert "}" not in usage
    assert "--help" in result.output


def test_run_help_usage_names_the_config_argument() -> None:
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "100"})
    assert "run [OPTIONS] CONFIG" in one_line(result.output)


@pytest.mark.parametrize("command", ["cube", "fit", "predict", "report", "run", "demo"])
def test_every_computing_command_takes_cluster(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"})
    assert "--cluster" in result.output


# --- errors before a cluster starts --------------------------------------------------------


def real_inputs_config(plateau: PlateauFiles, tmp_path: Path) -> tuple[Path, Path]:  # noqa: F811
    """A pipeline on the synthetic plateau's files as a user's own inputs; returns (config,
    the catalog copy) to break."""
    catalog = tmp_path / "catalog.yaml"
    doc = yaml.safe_load(plateau.catalog.read_text())
    for layer in doc["layers"].values():
        layer["path"] = str((plateau.catalog.parent / layer["path"]).resolve())
    catalog.write_text(yaml.safe_dump(doc))
    config = tmp_path / "pipeline.yaml"
    settings = {
        "name": "mine",
        "workdir": "work",
        "grid": str(plateau.grid),
        "catalog": catalog.name,
        "sites": "sites.csv",
        "fit": {"elements": ["Fe", "Ni"], "n_trees": 10, "search_trees": 10, "cv_folds": 3},
        "report": {"enabled": False},
    }
    config.write_text(yaml.safe_dump(settings))
    shutil.copy(plateau.sites, tmp_path / "sites.csv")
    return config, catalog


def test_run_lists_every_input_problem_and_starts_no_cluster(
    plateau: PlateauFiles,  # noqa: F811
    tmp_path: Path,
) -> None:
    config, catalog = real_inputs_config(plateau, tmp_path)
    sites = pd.read_csv(tmp_path / "sites.csv").rename(columns={"Ni": "nickel"})
    sites.to_csv(tmp_path / "sites.csv", index=False)
    doc = yaml.safe_load(catalog.read_text())
    first = next(iter(doc["layers"]))
    doc["layers"][first]["path"] = str(tmp_path / "nowhere.tif")
    catalog.write_text(yaml.safe_dump(doc))

    result = tpgrid("run", str(config))

    assert result.returncode == 2, result.stderr
    message = one_line(result.stderr)
    assert "2 problems" in message
    assert f"layer '{first}': file {tmp_path / 'nowhere.tif'} does not exist" in message
    assert "no column for element(s) ['Ni']" in message
    # No cluster: no dashboard line, and the run never began (no cube, no run record).
    assert DASHBOARD_LINE not in result.stdout + result.stderr
    assert not (tmp_path / "work" / "cube.zarr").exists()
    assert not (tmp_path / "work" / "runs").exists()


def test_a_dry_run_with_missing_inputs_says_what_is_missing(tmp_path: Path) -> None:
    tibet = ROOT / "pipelines" / "tibet_1km.yaml"
    catalog = load_catalog(ROOT / "pipelines" / yaml.safe_load(tibet.read_text())["catalog"])
    missing = [
        name
        for name in catalog.layers
        if not Path(catalog.location(name)).is_file() and "://" not in catalog.location(name)
    ]
    if not missing:
        pytest.skip("the plateau's inputs are on this machine")

    result = tpgrid("run", str(tibet), "--dry-run", cwd=tmp_path)

    assert result.returncode == 2, result.stdout
    message = one_line(result.stderr)
    assert "would update" not in result.stdout
    assert f"{len(missing)} with the catalog" in message
    assert "1 with the sites" in message
    assert all(f"layer '{name}'" in message for name in missing)


def test_cube_lists_every_bad_layer_before_a_cluster_starts(
    plateau: PlateauFiles,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, catalog = real_inputs_config(plateau, tmp_path)
    doc = yaml.safe_load(catalog.read_text())
    broken = list(doc["layers"])[:2]
    for name in broken:
        doc["layers"][name]["path"] = str(tmp_path / f"{name}-gone.tif")
    catalog.write_text(yaml.safe_dump(doc))

    result = tpgrid(
        "cube", "--catalog", str(catalog), "--grid", str(plateau.grid), "--out", str(tmp_path / "c")
    )

    assert result.returncode == 2
    message = one_line(result.stderr)
    assert "2 problems" in message
    assert all(f"layer '{name}'" in message for name in broken)
    assert DASHBOARD_LINE not in result.stdout + result.stderr


def test_cube_uses_the_cluster_it_is_given(plateau: PlateauFiles, tmp_path: Path) -> None:  # noqa: F811
    spec = tmp_path / "cluster.yaml"
    spec.write_text("kind: scheduler_file\nscheduler_file: not-started.json\n")

    result = tpgrid(
        "cube",
        "--catalog",
        str(plateau.catalog),
        "--grid",
        str(plateau.grid),
        "--out",
        str(tmp_path / "cube.zarr"),
        "--cluster",
        str(spec),
    )

    assert result.returncode == 2
    # The spec's relative path is read from the spec's folder.
    assert f"scheduler file {tmp_path / 'not-started.json'} does not exist" in one_line(
        result.stderr
    )


def test_fit_refuses_a_site_table_without_the_elements_column_before_a_cluster_starts(
    plateau: PlateauFiles,  # noqa: F811
    cube_path: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    sites = pd.read_csv(plateau.sites).drop(columns=["Ni"])
    sites.to_csv(tmp_path / "sites.csv", index=False)

    result = tpgrid(
        "fit",
        "--sites",
        str(tmp_path / "sites.csv"),
        "--cube",
        str(cube_path),
        "--out",
        str(tmp_path / "models"),
        "-e",
        "Fe",
        "-e",
        "Ni",
    )

    assert result.returncode == 2
    assert "no column for element(s) ['Ni']" in one_line(result.stderr)
    assert DASHBOARD_LINE not in result.stdout + result.stderr


def test_the_full_demo_has_its_own_workdir_and_refuses_another_plateau(
    plateau: PlateauFiles,  # noqa: F811
    tmp_path: Path,
) -> None:
    # A workdir of the small demo where the full one would go: refused before anything runs.
    shutil.copytree(plateau.root, tmp_path / "tpgrid-demo-full" / "plateau")
    truth = tmp_path / "tpgrid-demo-full" / "plateau" / "truth" / "truth.json"
    before = truth.read_bytes()

    result = tpgrid("demo", "--full", cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    message = one_line(result.stderr)
    assert "tpgrid-demo-full holds the synthetic plateau of size 'small', seed 0" in message
    assert "not size 'full', seed 0" in message
    assert "pass --out with a new directory" in message
    assert DASHBOARD_LINE not in result.stdout + result.stderr
    assert truth.read_bytes() == before
    assert not (tmp_path / "tpgrid-demo").exists()  # the small demo's default is not touched


def test_demo_refuses_another_seed_in_its_workdir(
    plateau: PlateauFiles,  # noqa: F811
    tmp_path: Path,
) -> None:
    shutil.copytree(plateau.root, tmp_path / "demo" / "plateau")

    result = tpgrid("demo", "--out", str(tmp_path / "demo"), "--seed", "1")

    assert result.returncode == 2
    assert "seed 0, not size 'small', seed 1" in one_line(result.stderr)
    assert "--out" in result.stderr
    assert not (tmp_path / "demo" / "cube.zarr").exists()


# --- output that fits the terminal ---------------------------------------------------------


def final_frame(height: int, feed: Callable[[Callable[[str, int, int], None]], None]) -> list[str]:
    """The lines the progress display shows last on a terminal of ``height`` rows (a console
    that is not a terminal prints only that frame)."""
    terminal = Console(record=True, width=80, height=height, file=io.StringIO())
    with chunk_progress(terminal) as update:
        feed(update)
    return terminal.export_text().splitlines()


def test_the_progress_display_stays_within_the_terminal_and_shows_the_last_update() -> None:
    def run(update: Callable[[str, int, int], None]) -> None:
        for layer in range(19):  # a run's cube bars
            for done in range(1, 5):
                update(f"cube layer{layer}", done, 4)
        for element in ("Fe", "Ni", "Zn"):
            for done in range(1, 11):
                update(f"fit {element}", done, 10)
        for element in range(12):
            update(f"predict element{element}", 2, 7)
        update("predict element11", 3, 7)

    shown = final_frame(8, run)

    assert len(shown) <= 8 - 1
    assert shown[-2].startswith("predict element11")
    assert "3/7" in shown[-2]
    # 2 folded steps and 12 predict bars, of which 5 fit: the other 9 are counted.
    assert shown[-1] == "+9 more"


def test_a_finished_steps_bars_fold_into_one() -> None:
    def run(update: Callable[[str, int, int], None]) -> None:
        for layer in range(5):
            update(f"cube layer{layer}", 4, 4)
        update("fit Fe", 1, 10)

    shown = final_frame(24, run)

    assert len(shown) == 2
    assert shown[0].startswith("cube ×5")
    assert "20/20" in shown[0]
    assert shown[1].startswith("fit Fe")
    assert "1/10" in shown[1]


def write_runs(workdir: Path, count: int) -> list[str]:
    """Run records as runs write them (``RunRecord.to_json``), ``count`` of them."""
    (workdir / "runs").mkdir(parents=True)
    ids = []
    for i in range(count):
        record = RunRecord(
            id=f"20261202T0{i}1010Z-abcdef{i:02d}",
            pipeline="mine",
            started="2026-12-02T00:00:00+00:00",
            finished="2026-12-02T00:01:00+00:00",
            status="ok",
            changed=True,
            steps=(Step("cube", "updated", "chunks rewritten: " + ", ".join(["clay 9"] * 8), 1.0),),
            published=f"v{i}",
            versions={},
        )
        (workdir / "runs" / f"{record.id}.json").write_text(json.dumps(record.to_json()))
        ids.append(record.id)
    return ids


@pytest.mark.parametrize("by", ["workdir", "yaml"])
def test_runs_takes_a_workdir_or_its_yaml_and_never_cuts_a_run_id(by: str, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    ids = write_runs(workdir, 2)
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({"name": "mine", "workdir": "work", "synthetic": {}}))

    result = tpgrid("runs", str(workdir if by == "workdir" else config), columns=80)

    assert result.returncode == 0, result.stderr
    assert all(run_id in result.stderr for run_id in ids)


def test_the_result_path_is_printed_whole_at_a_narrow_width(tmp_path: Path) -> None:
    out = tmp_path / ("a-long-folder-name-for-a-survey-" * 3) / "plateau"

    result = tpgrid("synth", str(out), columns=40)

    assert result.returncode == 0, result.stderr
    # On one line (other lines, e.g. a library's warning, may come before it).
    assert any(str(out.resolve()) in line for line in result.stderr.splitlines()), result.stderr
