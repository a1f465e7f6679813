"""The science report end to end: models fitted on the small synthetic plateau, analysed, the
AOA computed on a Dask cluster, written as one self-contained HTML page, PNGs and a JSON
summary; and the ``tpgrid report`` command."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from distributed import Client, LocalCluster
from typer.testing import CliRunner

from tests.plateau_fixtures import cube_path, plateau  # noqa: F401  (fixtures)
from tpgrid.artifact import HELD_OUT_FILE, load_model
from tpgrid.cli import app
from tpgrid.core.applicability import column_weights
from tpgrid.core.explain import importance_table
from tpgrid.core.uncertainty import CALIBRATED_SD, TREE_QUANTILES, HeldOutTrees, coverage_table
from tpgrid.errors import AnalysisError, ConfigError, OutputExistsError
from tpgrid.fit import FitSettings, SearchGrid, fit_models
from tpgrid.outputs import ATTR_RUN, open_prediction, write_run_record
from tpgrid.predict import load_models, predict_cube
from tpgrid.publication import write_manifest
from tpgrid.report import (
    FIGURES_DIR,
    REPORT_FILE,
    SUMMARY_FILE,
    ReportResult,
    ReportSettings,
    write_report,
)
from tpgrid.report.analysis import (
    CUBE_LAYER,
    EFFECTS_SHOWN,
    SITE_COLUMN,
    analyse_element,
    site_factors,
)
from tpgrid.report.inputs import load_element
from tpgrid.report.render import KEYS_FILE
from tpgrid.synthetic import PlateauFiles

ELEMENTS = ("Fe", "Ni")  # the most and the fewest sites of the small plateau
SETTINGS = ReportSettings()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    # In-process workers behind a TCP scheduler, so the CLI can reach it by address too.
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp://",
        dashboard_address=None,
    ) as local:
        yield local


@pytest.fixture(scope="module")
def models(
    plateau: PlateauFiles,  # noqa: F811
    cube_path: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    out = tmp_path_factory.mktemp("models")
    settings = FitSettings(
        elements=ELEMENTS,
        calibrate=("Zn", "Ni"),
        n_trees=60,
        search_trees=30,
        search_grid=SearchGrid(max_features=(0.5,), min_samples_leaf=(2,)),
        cv_folds=5,
        importance_repeats=2,
    )
    fit_models(plateau.sites, cube_path, out, settings, local_threads=2)
    return out


@pytest.fixture(scope="module")
def prediction(
    models: Path,
    cube_path: Path,  # noqa: F811
    cluster: LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    out = tmp_path_factory.mktemp("prediction") / "maps.zarr"
    with Client(cluster):
        predict_cube(cube_path, load_models(models), out)
    return out


@pytest.fixture(scope="module")
def report(
    models: Path,
    prediction: Path,
    cluster: LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> ReportResult:
    out = tmp_path_factory.mktemp("report") / "report"
    with Client(cluster):
        return write_report(models, out, prediction=prediction, settings=SETTINGS)


@pytest.mark.slow
def test_html_embeds_every_figure_and_needs_no_other_file(report: ReportResult) -> None:
    page = report.html.read_text(encoding="utf-8")
    embedded = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert sorted(embedded) == sorted(path.stem for path in report.figures)
    assert not re.search(r'(src|href)="(?!data:)', page)


@pytest.mark.slow
def test_figures_are_png_files_beside_the_page(report: ReportResult) -> None:
    names = {path.name for path in report.figures}
    expected = {"histograms.png", "observed_predicted.png", "coverage.png", "interval_bins.png"}
    expected |= {f"{kind}_{e}.png" for e in ELEMENTS for kind in ("importance", "effects")}
    expected |= {f"{kind}_{e}.png" for e in ELEMENTS for kind in ("applicability", "map")}
    assert expected <= names
    for path in report.figures:
        assert path.parent == report.directory / FIGURES_DIR
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_report_written_on_the_cluster_equals_one_written_without_it(
    models: Path, prediction: Path, cluster: LocalCluster, tmp_path: Path
) -> None:
    # With a Dask client the analyses and the figures are tasks; the report must not change.
    settings = SETTINGS.model_copy(update={"applicability": False})  # the AOA maps need a client
    here = write_report(models, tmp_path / "here", prediction=prediction, settings=settings)
    with Client(cluster):
        there = write_report(models, tmp_path / "there", prediction=prediction, settings=settings)
    assert [path.name for path in here.figures] == [path.name for path in there.figures]
    assert {f"{kind}_{e}.png" for e in ELEMENTS for kind in ("importance", "map")} <= {
        path.name for path in there.figures
    }
    for drawn_here, drawn_there in zip(here.figures, there.figures, strict=True):
        assert drawn_here.read_bytes() == drawn_there.read_bytes(), drawn_here.name
    assert here.summary == there.summary


@pytest.mark.slow
def test_summary_reports_nominal_and_achieved_coverage_per_element(
    report: ReportResult,
) -> None:
    summary = json.loads((report.directory / SUMMARY_FILE).read_text())
    assert summary == report.summary
    for element in ELEMENTS:
        rows = {row["method"]: row for row in summary["elements"][element]["coverage"]}
        assert {row["nominal"] for row in rows.values()} == {0.9}
        # Calibrated on the other folds, the interval holds on held-out sites; the raw tree
        # quantiles of the same forests do not.
        assert 0.8 <= rows[CALIBRATED_SD]["achieved"] <= 1.0
        assert rows[TREE_QUANTILES]["achieved"] < rows[CALIBRATED_SD]["achieved"]
        assert summary["elements"][element]["interval_k"] == rows[CALIBRATED_SD]["k"]


@pytest.mark.slow
def test_the_page_shows_the_published_interval_per_scheme_and_di_bin(
    report: ReportResult, models: Path
) -> None:
    page = report.html.read_text(encoding="utf-8")
    assert "The published 90% interval, by applicability" in page
    for element in ELEMENTS:
        record = load_model(models / element).record["intervals"]
        assert report.summary["elements"][element]["intervals"] == record
        for scheme in ("grouped", "spatial"):
            summary = record["coverage"][scheme]
            # One row per scheme overall and per DI bin, with the recorded numbers.
            rows = [summary["overall"], *summary["bins"]]
            for row in rows:
                cells = f"<td>{row['n_sites']}</td>\n      <td>{row['n_rows']}</td>"
                assert cells in page, (element, scheme, row)
    assert "calibrated on grouped + spatial" in page


@pytest.mark.slow
def test_applicability_is_read_from_the_prediction_not_computed_again(
    report: ReportResult, prediction: Path
) -> None:
    assert report.summary["applicability"] == "prediction"
    assert not (report.directory / "applicability.zarr").exists()
    for element in ELEMENTS:
        aoa = np.asarray(zarr.open_array(prediction / f"{element}_aoa")[:])
        share = report.summary["elements"][element]["applicability"]["share_inside"]
        assert share == pytest.approx(np.mean(aoa[aoa != 255] == 1))
        assert 0.0 < share < 1.0


@pytest.mark.slow
def test_a_report_without_a_prediction_computes_the_same_applicability_layers(
    models: Path, prediction: Path, cluster: LocalCluster, tmp_path: Path
) -> None:
    settings = SETTINGS.model_copy(update={"effects": ()})
    with Client(cluster):
        alone = write_report(models, tmp_path / "alone", settings=settings)
    assert alone.summary["applicability"] == "applicability.zarr"
    for element in ELEMENTS:
        for layer in ("di", "aoa"):
            computed = zarr.open_array(
                alone.directory / "applicability.zarr" / f"{element}_{layer}"
            )
            predicted = zarr.open_array(prediction / f"{element}_{layer}")
            np.testing.assert_array_equal(computed[:], predicted[:])


@pytest.mark.slow
def test_group_letters_of_the_report_follow_the_synthetic_fe_factors(
    report: ReportResult,
) -> None:
    # Lithology, not vegetation, is what separates Fe's site means on the small plateau:
    # acid metamorphic rocks ×1.24 against carbonate sedimentary ×0.86.
    letters = report.summary["elements"]["Fe"]["groups"]["lithology"]["letters"]
    assert letters["acid metamorphic (MA)"] == "a"
    assert not set(letters["acid metamorphic (MA)"]) & set(letters["carbonate sedimentary (SO)"])


@pytest.mark.slow
def test_report_records_the_prediction_run_it_maps(report: ReportResult, prediction: Path) -> None:
    _, run = open_prediction(prediction)
    assert report.summary["prediction_run_id"] == run["run_id"]
    assert run["run_id"] in report.html.read_text(encoding="utf-8")


@pytest.mark.slow
def test_report_refuses_a_prediction_made_with_other_models(
    models: Path, prediction: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.zarr"
    shutil.copytree(prediction, other)
    _, run = open_prediction(other)
    run["models"]["Fe"]["model_hash"] = "0" * 64
    group = zarr.open_group(other, mode="r+")
    group.attrs[ATTR_RUN] = write_run_record(other, run)
    zarr.consolidate_metadata(other)
    with pytest.raises(AnalysisError, match="another Fe model"):
        write_report(models, tmp_path / "report", prediction=other, settings=SETTINGS)


@pytest.mark.slow
def test_report_refuses_to_replace_an_existing_directory(
    models: Path, report: ReportResult
) -> None:
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_report(models, report.directory, settings=SETTINGS)


@pytest.mark.slow
def test_cli_report_writes_the_report_and_prints_the_coverage(
    models: Path, cluster: LocalCluster, tmp_path: Path
) -> None:
    out = tmp_path / "cli-report"
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--models",
            str(models),
            "--out",
            str(out),
            "--effect",
            "slope",
            "--no-applicability",
            "--scheduler-address",
            cluster.scheduler_address,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / REPORT_FILE).is_file()
    assert "published, grouped CV" in result.output
    summary = json.loads((out / "report.json").read_text())
    lines = result.output.splitlines()
    for element in ELEMENTS:
        coverage = summary["elements"][element]["intervals"]["coverage"]
        shares = [f"{coverage[s]['overall']['coverage']:.0%}" for s in ("grouped", "spatial")]
        (row,) = [line.split() for line in lines if line.split()[:1] == [element]]
        assert row[2:4] == shares, row
    assert not (out / "applicability.zarr").exists()
    assert {p.name for p in (out / FIGURES_DIR).glob("effects_*.png")} == {
        f"effects_{e}.png" for e in ELEMENTS
    }


def test_cli_report_names_a_missing_model_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["report", "--models", str(tmp_path), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert "tpgrid fit" in result.output


def test_the_analyses_are_what_the_stored_held_out_arrays_imply(models: Path) -> None:
    # Read held_out.npz directly, not through the loader under test.
    model = load_element(models / "Fe")
    with np.load(models / "Fe" / HELD_OUT_FILE, allow_pickle=False) as data:
        stored = {name: data[name] for name in data.files}
    analysis = analyse_element(model, {}, SETTINGS.model_copy(update={"level": 0.8}))
    variables = list(model.artifact.features.column_variables)
    expected = importance_table(
        float(np.sum(stored["importance_base_sse"])),
        stored["importance_sse"].sum(axis=0),
        variables,
    )
    pd.testing.assert_frame_equal(analysis.importance, expected)
    trees, folds = stored["trees"], stored["folds"]
    table, k = coverage_table(model.y, HeldOutTrees(folds, trees), 0.8)
    pd.testing.assert_frame_equal(analysis.coverage, table)
    assert analysis.k == k
    # The tree quantile interval at 80 %: the rows' 10th and 90th percentiles of the trees.
    low, high = np.quantile(trees, [0.1, 0.9], axis=1)
    inside = np.mean((model.y >= low) & (model.y <= high))
    assert analysis.achieved(TREE_QUANTILES) == pytest.approx(inside)
    # The AOA is the model's own training space, weighted by the %IncMSE of the stored errors.
    assert analysis.space is model.artifact.space
    weights = column_weights(expected["incmse"].to_dict(), variables)
    np.testing.assert_array_equal(analysis.space.weights, weights)
    # The interval table holds the record's coverage: the overall row of each scheme first.
    record = model.artifact.record["intervals"]["coverage"]
    for scheme in ("grouped", "spatial"):
        row = analysis.intervals.loc[(scheme, "all")]
        assert row["coverage"] == record[scheme]["overall"]["coverage"]
        assert row["sites"] == record[scheme]["overall"]["n_sites"]
        assert len(analysis.intervals.loc[scheme]) == 1 + len(record[scheme]["bins"])


@pytest.fixture
def published_report(report: ReportResult, tmp_path: Path) -> Path:
    """A copy of the module's report as publishing leaves it: with its SHA256SUMS."""
    copy = tmp_path / "previous"
    shutil.copytree(report.directory, copy)
    write_manifest(copy)
    return copy


@pytest.mark.slow
def test_a_report_reusing_the_previous_one_equals_one_written_afresh(
    models: Path,
    prediction: Path,
    cluster: LocalCluster,
    report: ReportResult,
    published_report: Path,
    tmp_path: Path,
) -> None:
    stages: set[tuple[str, bool]] = set()
    with Client(cluster):
        again = write_report(
            models,
            tmp_path / "again",
            prediction=prediction,
            settings=SETTINGS,
            previous=published_report,
            progress=lambda stage, done, total: stages.add((stage, done == total)),
        )
    assert {("analyses", True), ("figures", True)} <= stages  # the progress bars' stages
    # Every figure linked (the data did not change), and the report equal byte for byte to
    # the module's, whose figures were all drawn.
    assert sorted(again.reused) == sorted(path.name for path in report.figures)
    names = {p.relative_to(report.directory) for p in (report.directory / FIGURES_DIR).iterdir()}
    assert names == {
        p.relative_to(again.directory) for p in (again.directory / FIGURES_DIR).iterdir()
    }
    for name in (SUMMARY_FILE, REPORT_FILE, KEYS_FILE, *map(str, names)):
        assert (again.directory / name).read_bytes() == (report.directory / name).read_bytes(), name


@pytest.mark.slow
def test_a_changed_prediction_chunk_or_a_damaged_figure_is_drawn_again(
    models: Path,
    prediction: Path,
    cluster: LocalCluster,
    report: ReportResult,
    published_report: Path,
    tmp_path: Path,
) -> None:
    changed = tmp_path / "changed.zarr"
    shutil.copytree(prediction, changed)
    layer = zarr.open_array(changed / "Fe_mean", mode="r+")
    rows, columns = layer.chunks
    layer[:rows, :columns] = np.asarray(layer[:rows, :columns]) + 1.0
    damaged = published_report / FIGURES_DIR / "importance_Ni.png"
    damaged.write_bytes(b"not the figure")
    with Client(cluster):
        again = write_report(
            models,
            tmp_path / "again",
            prediction=changed,
            settings=SETTINGS,
            previous=published_report,
        )
    drawn = {path.name for path in again.figures} - set(again.reused)
    assert drawn == {"map_Fe.png", "importance_Ni.png"}
    figures = again.directory / FIGURES_DIR
    fresh = report.directory / FIGURES_DIR
    assert (figures / "importance_Ni.png").read_bytes() == (
        fresh / "importance_Ni.png"
    ).read_bytes()
    assert (figures / "map_Fe.png").read_bytes() != (fresh / "map_Fe.png").read_bytes()
    keys = json.loads((again.directory / KEYS_FILE).read_text())["figures"]
    before = json.loads((report.directory / KEYS_FILE).read_text())["figures"]
    assert {name for name in keys if keys[name] != before[name]} == {"map_Fe.png"}


# --- what is analysed in any region: effects, factors, poor models ---------------------------


def test_effects_default_to_each_elements_most_important_continuous_predictors(
    models: Path,
) -> None:
    model = load_element(models / "Fe")
    analysis = analyse_element(model, {}, SETTINGS)
    continuous = model.artifact.features.continuous
    drawn = [pdp.variable for pdp, _ in analysis.effects]
    assert [ale.variable for _, ale in analysis.effects] == drawn
    assert len(drawn) == EFFECTS_SHOWN
    assert set(drawn) <= set(continuous)
    incmse = analysis.importance["incmse"]
    others = [name for name in continuous if name not in drawn]
    assert min(incmse[drawn]) >= max(incmse[others])
    assert list(incmse[drawn]) == sorted(incmse[drawn], reverse=True)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"effects": ("slope", "cadmium_index")}, r"report\.effects names \['cadmium_index'\]"),
        ({"effects": ("lithology",)}, r"lithology: categorical, compared by class instead"),
        ({"factors": ("land_use",)}, r"report\.factors names \['land_use'\]"),
    ],
)
def test_an_effect_or_factor_the_models_do_not_have_is_refused_before_any_work(
    models: Path, tmp_path: Path, settings: dict[str, tuple[str, ...]], match: str
) -> None:
    out = tmp_path / "report"
    with pytest.raises(ConfigError, match=match) as raised:
        write_report(models, out, settings=ReportSettings(**settings))
    message = str(raised.value)
    if "effects" in settings:
        assert "'slope'" in message  # the predictors there are, to choose from
    else:
        assert "'vegetation'" in message
        assert "'lithology'" in message
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_site_factors_are_text_columns_with_one_class_per_site() -> None:
    frame = pd.DataFrame(
        {
            "site_id": ["s1", "s1", "s2", "s3", "s4"],
            "sample_id": ["a", "b", "c", "d", "e"],
            "x": [1.0, 1.0, 2.0, 3.0, 4.0],
            "land_use": ["arable", "arable", "pasture", " forest", "arable"],
            "note": ["wet", "dry", "wet", "dry", "wet"],  # differs within site s1
            "region": ["north"] * 5,  # one class only
            "Pb": [12.0, 13.0, 40.0, 8.0, 9.0],
            "parcel": ["p1", "p1", "p2", None, "p4"],
        }
    )
    factors = site_factors(frame)
    assert list(factors.columns) == ["land_use", "parcel"]
    assert factors["land_use"].to_dict() == {
        "s1": "arable",
        "s2": "pasture",
        "s3": "forest",
        "s4": "arable",
    }
    assert factors["parcel"].isna().to_dict() == {"s1": False, "s2": False, "s3": True, "s4": False}


def test_sites_are_compared_by_named_classes_of_layers_and_site_table_columns(
    models: Path,
    plateau: PlateauFiles,  # noqa: F811
) -> None:
    model = load_element(models / "Fe")
    table = pd.read_csv(plateau.sites, dtype={"site_id": str})
    # A site-table column that is no predictor (here the surveyed vegetation, renamed).
    table["surveyed_cover"] = table["vegetation"]
    sites = site_factors(table)
    assert {"vegetation", "lithology", "surveyed_cover"} <= set(sites.columns)
    analysis = analyse_element(model, {}, SETTINGS, sites)
    assert {"vegetation", "lithology", "surveyed_cover"} <= set(analysis.comparisons)
    assert analysis.factors["vegetation"].source == CUBE_LAYER  # the model's, not the table's
    assert analysis.factors["surveyed_cover"].source == SITE_COLUMN
    lithology = next(f for f in model.artifact.features.categorical if f.variable == "lithology")
    assert set(analysis.comparisons["lithology"].table.index) <= set(lithology.names)
    surveyed = analysis.comparisons["surveyed_cover"].table
    assert set(surveyed.index) <= set(table["vegetation"])
    assert surveyed["n_sites"].sum() <= table["site_id"].nunique()
    only = analyse_element(
        model, {}, SETTINGS.model_copy(update={"factors": ("surveyed_cover",)}), sites
    )
    assert list(only.comparisons) == ["surveyed_cover"]


@pytest.mark.slow
def test_a_model_worse_than_the_mean_is_flagged_in_the_page_and_the_summary(
    models: Path,
    plateau: PlateauFiles,  # noqa: F811
    tmp_path: Path,
) -> None:
    poor = tmp_path / "models"
    shutil.copytree(models, poor)
    model_json = poor / "Ni" / "model.json"
    doc = json.loads(model_json.read_text())
    doc["record"]["cv"]["grouped"]["r2"] = -0.31
    model_json.write_text(json.dumps(doc))
    table = pd.read_csv(plateau.sites, dtype={"site_id": str, "sample_id": str})
    table["surveyed cover"] = table["vegetation"]  # a site-table factor, no predictor
    sites = tmp_path / "sites.csv"
    table.to_csv(sites, index=False)
    settings = SETTINGS.model_copy(update={"applicability": False})
    result = write_report(poor, tmp_path / "report", sites=sites, settings=settings)
    assert result.summary["elements"]["Fe"]["quality_warning"] is None
    warning = result.summary["elements"]["Ni"]["quality_warning"]
    assert warning.startswith("grouped-CV R² -0.31: ")
    page = result.html.read_text(encoding="utf-8")
    flagged = page[page.index("<div class='warning'>") :]
    flagged = flagged[: flagged.index("</div>")]
    assert "<b>Ni</b>" in flagged
    assert "<b>Fe</b>" not in flagged
    # The effects drawn are said, with why; no region is named anywhere.
    drawn = result.summary["elements"]["Fe"]["effects"]
    assert f"Fe: {', '.join(drawn)}" in page
    assert "highest held-out %IncMSE (report.effects unset)" in page
    # The site table's factor is compared, tabled and drawn beside the layers'.
    assert "<h3>surveyed cover <span class='note'>(site-table column)</span></h3>" in page
    assert "groups_surveyed_cover.png" in {path.name for path in result.figures}
    groups = result.summary["elements"]["Fe"]["groups"]
    assert groups["surveyed cover"]["source"] == "site-table column"
    assert set(groups["surveyed cover"]["letters"]) <= set(table["vegetation"])
    text = page[page.index("</p>") :].lower()  # after the input paths (in a 'plateau' dir)
    assert "plateau" not in text
    assert "tibet" not in text
