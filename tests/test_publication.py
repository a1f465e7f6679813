"""Published versions: a reader of `current` sees one complete version, never a mix; every
file of a version is listed with its checksum, and checked before it is carried over."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from tests.conftest import SMALL_SPEC
from tests.run_groups import known_layers, write_run_group
from tpgrid.errors import OutputExistsError
from tpgrid.grid import TargetGrid
from tpgrid.outputs import STAC_ITEM
from tpgrid.publication import (
    current_version,
    prune,
    publish_version,
    read_manifest,
    verify_version,
    versions,
)

ELEMENTS = ("Mo",)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two prediction runs of the same product, A and B."""
    grid = TargetGrid.from_spec(SMALL_SPEC)
    root = tmp_path_factory.mktemp("runs")
    return {
        run_id: write_run_group(root / f"{run_id}.zarr", grid, ELEMENTS, run_id * 32)
        for run_id in ("a1", "b2")
    }


def published_run(directory: Path) -> str:
    return str(json.loads((directory / STAC_ITEM).read_text())["properties"]["tpgrid:run_id"])


def test_publishing_makes_a_new_version_current_and_keeps_the_old(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    first = publish_version(runs["a1"], tmp_path)
    second = publish_version(runs["b2"], tmp_path)
    assert first.new
    assert second.new
    current = current_version(tmp_path)
    assert current == second.directory
    assert published_run(current) == "b2" * 32
    assert [v.name for v in versions(tmp_path)] == [first.version, second.version]


def test_publishing_the_current_run_again_does_nothing(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    first = publish_version(runs["a1"], tmp_path)
    again = publish_version(runs["a1"], tmp_path)
    assert not again.new
    assert again.version == first.version
    assert len(versions(tmp_path)) == 1


def test_prune_keeps_the_newest_and_never_the_current(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    for run in ("a1", "b2", "a1"):
        publish_version(runs[run], tmp_path)
    before = versions(tmp_path)
    removed = prune(tmp_path, keep=1)
    assert removed == before[:2]
    assert versions(tmp_path) == [current_version(tmp_path)]


def test_a_reader_during_publishing_always_sees_one_complete_version(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    publish_version(runs["a1"], tmp_path)
    expected = {p.name for p in (current_version(tmp_path) or tmp_path).iterdir()}
    seen: list[tuple[str, bool]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            current = current_version(tmp_path)
            if current is None:  # a moment without a current version: a failure
                seen.append(("none", False))
                continue
            names = {p.name for p in current.iterdir()}
            seen.append((published_run(current), names == expected))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for run in ("b2", "a1", "b2"):
            publish_version(runs[run], tmp_path)
    finally:
        stop.set()
        reader.join()
    assert {run for run, _ in seen} == {"a1" * 32, "b2" * 32}
    assert all(complete for _, complete in seen)


def test_a_directory_that_is_not_a_publication_is_refused(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a tpgrid publication directory"):
        publish_version(runs["a1"], tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


#: The files of :func:`fake_report` listed in its SHA256SUMS: all but the page and summary.
LISTED = (
    "applicability.zarr/Mo/c/0/0",
    "applicability.zarr/Mo/c/0/1",
    "applicability.zarr/Mo/c/1/0",
    "applicability.zarr/Mo/c/1/1",
    "applicability.zarr/Mo/zarr.json",
    "applicability.zarr/zarr.json",
    "figures/map.png",
    "report.html",
    "report.json",
)


def fake_report(folder: Path) -> None:
    """A report writer: a page, a summary, a figure and an applicability layer of 4 chunks."""
    (folder / "figures").mkdir(parents=True)
    (folder / "report.html").write_text("<html>report</html>\n")
    (folder / "report.json").write_text('{"elements": {}}\n')
    (folder / "figures" / "map.png").write_bytes(b"\x89PNG" + bytes(range(200)))
    group = zarr.open_group(folder / "applicability.zarr", mode="w", zarr_format=3)
    layer = group.create_array("Mo", shape=(8, 8), chunks=(4, 4), dtype="float32")
    layer[:] = np.arange(64, dtype="float32").reshape(8, 8)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def inode(path: Path) -> int:
    return path.stat().st_ino


def test_every_asset_carries_its_files_size_and_checksum(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    version = publish_version(runs["a1"], tmp_path, report=fake_report).directory
    item = json.loads((version / STAC_ITEM).read_text())
    assert "https://stac-extensions.github.io/file/v2.1.0/schema.json" in item["stac_extensions"]
    maps = {p.name for p in version.iterdir() if p.is_file()} - {STAC_ITEM}
    assert {"Mo_mean.tif", "Mo_quicklook.png"} <= maps
    # The report is three assets, whatever its size: page, summary and their SHA256SUMS.
    report = {"report/report.html", "report/report.json", "report/SHA256SUMS"}
    hrefs = [a["href"].removeprefix("./") for a in item["assets"].values()]
    assert sorted(hrefs) == sorted(maps | report)
    assert len([h for h in hrefs if h.startswith("report/")]) == 3
    for asset in item["assets"].values():
        data = (version / asset["href"]).read_bytes()
        assert asset["file:size"] == len(data)
        assert asset["file:checksum"] == "1220" + hashlib.sha256(data).hexdigest()
    assets = item["assets"]
    assert assets["report/report.html"]["roles"] == ["metadata"]
    assert assets["report/report.html"]["type"] == "text/html"
    assert assets["report/report.json"]["type"] == "application/json"
    assert (assets["report/SHA256SUMS"]["type"], assets["report/SHA256SUMS"]["roles"]) == (
        "text/plain",
        ["metadata"],
    )
    (link,) = item["links"]
    assert (link["rel"], link["href"], link["type"]) == (
        "describedby",
        "./report/report.html",
        "text/html",
    )
    assert (version / link["href"]).is_file()  # relative to the item
    assert verify_version(version) == []


def test_verify_finds_a_flipped_byte_a_deleted_quicklook_and_a_truncated_report_file(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    version = publish_version(runs["a1"], tmp_path, report=fake_report).directory
    flip_byte(version / "Mo_sd.tif")
    (version / "Mo_quicklook.png").unlink()
    page = version / "report" / "report.html"
    page.write_bytes(page.read_bytes()[:5])
    found = {d.path.relative_to(version).as_posix(): d.problem for d in verify_version(version)}
    assert found == {
        "Mo_sd.tif": "content differs from its SHA-256 recorded when written",
        "Mo_quicklook.png": "missing",
        "report/report.html": f"5 bytes, {len('<html>report</html>') + 1} when written",
    }
    (version / STAC_ITEM).unlink()
    (damage,) = verify_version(version)
    assert damage.path == version / STAC_ITEM
    assert damage.problem.startswith("missing or unreadable")


CHUNK = "report/applicability.zarr/Mo/c/1/0"
DIFFERS = "content differs from its SHA-256 recorded when written"


def test_the_reports_manifest_lists_every_file_of_it_with_its_sha256(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    version = publish_version(runs["a1"], tmp_path, report=fake_report).directory
    report = version / "report"
    in_folder = {p.relative_to(report).as_posix() for p in report.rglob("*") if p.is_file()}
    assert in_folder == {*LISTED, "SHA256SUMS"}
    expected = "".join(
        f"{hashlib.sha256((report / name).read_bytes()).hexdigest()}  {name}\n" for name in LISTED
    )
    assert (report / "SHA256SUMS").read_text() == expected
    assert list(read_manifest(report / "SHA256SUMS")) == list(LISTED)


def test_sha256sum_checks_the_report_and_finds_a_flipped_byte(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    report = publish_version(runs["a1"], tmp_path, report=fake_report).directory / "report"

    def sha256sum() -> subprocess.CompletedProcess[str]:
        # coreutils' own program: the manifest is in the format it reads.
        return subprocess.run(
            ["sha256sum", "--check", "--strict", "SHA256SUMS"],
            cwd=report,
            capture_output=True,
            text=True,
            check=False,
        )

    fresh = sha256sum()
    assert (fresh.returncode, fresh.stderr) == (0, "")
    assert fresh.stdout.splitlines() == [f"{name}: OK" for name in LISTED]
    flip_byte(report / "figures" / "map.png")
    flipped = sha256sum()
    assert flipped.returncode == 1
    assert "figures/map.png: FAILED" in flipped.stdout.splitlines()
    assert "applicability.zarr/Mo/c/1/0: OK" in flipped.stdout.splitlines()


def test_verify_finds_a_flipped_chunk_a_deleted_figure_and_a_stray_file_in_the_report(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    version = publish_version(runs["a1"], tmp_path, report=fake_report).directory
    flip_byte(version / CHUNK)
    (version / "report" / "figures" / "map.png").unlink()
    (version / "report" / "figures" / "extra.png").write_bytes(b"not ours")
    found = {d.path.relative_to(version).as_posix(): d.problem for d in verify_version(version)}
    assert found == {
        CHUNK: DIFFERS,
        "report/figures/map.png": "missing",
        "report/figures/extra.png": "listed neither in SHA256SUMS nor in the STAC item",
    }


def test_a_damaged_manifest_alone_is_named(runs: dict[str, Path], tmp_path: Path) -> None:
    version = publish_version(runs["a1"], tmp_path, report=fake_report).directory
    flip_byte(version / CHUNK)
    flip_byte(version / "report" / "SHA256SUMS")
    found = {d.path.relative_to(version).as_posix(): d.problem for d in verify_version(version)}
    # Its lines cannot be trusted to say which chunk is damaged: the report is, as a whole.
    assert found == {"report/SHA256SUMS": DIFFERS}


def rewrite_manifest(version: Path, text: str) -> None:
    """Replace the report's SHA256SUMS and its record in the item, as if written so."""
    path = version / "report" / "SHA256SUMS"
    path.write_text(text)
    item = json.loads((version / STAC_ITEM).read_text())
    asset = item["assets"]["report/SHA256SUMS"]
    asset["file:size"] = len(text.encode())
    asset["file:checksum"] = "1220" + hashlib.sha256(text.encode()).hexdigest()
    (version / STAC_ITEM).write_text(json.dumps(item))


def test_a_malformed_line_of_the_manifest_is_damage(runs: dict[str, Path], tmp_path: Path) -> None:
    version = publish_version(runs["a1"], tmp_path, report=fake_report).directory
    lines = (version / "report" / "SHA256SUMS").read_text().splitlines(keepends=True)
    rewrite_manifest(version, "".join([lines[0], "not a checksum line\n", *lines[1:]]))
    (damage,) = verify_version(version)
    assert damage.path == version / "report" / "SHA256SUMS"
    assert damage.problem == (
        "malformed: line 2 is not '<sha256>  <relative path>': 'not a checksum line'"
    )


SHA = "ab" * 32


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"{SHA} figures/map.png\n", "line 1 is not"),  # one space: neither text nor binary
        (f"{SHA}  ../Mo_mean.tif\n", "line 1 is not"),  # outside the report
        (f"{SHA}  /etc/passwd\n", "line 1 is not"),
        (f"{SHA}  ./figures/map.png\n", "line 1 is not"),  # not as written: one name per file
        (f"{SHA[:-2]}  figures/map.png\n", "line 1 is not"),
        (f"{SHA}  a\n{SHA}  a\n", "line 2 lists a again"),
        (f"{SHA}  a", "the last line does not end with a newline"),
    ],
)
def test_read_manifest_refuses_what_it_did_not_write(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "SHA256SUMS"
    path.write_text(text)
    with pytest.raises(ValueError, match="^" + problem):
        read_manifest(path)


def test_read_manifest_reads_text_and_binary_mode_lines(tmp_path: Path) -> None:
    path = tmp_path / "SHA256SUMS"
    path.write_text(f"{SHA}  figures/map.png\n{'cd' * 32} *applicability.zarr/zarr.json\n")
    assert read_manifest(path) == {
        "figures/map.png": SHA,
        "applicability.zarr/zarr.json": "cd" * 32,
    }


def test_a_damaged_file_of_the_previous_version_is_rendered_afresh_not_linked(
    runs: dict[str, Path], tmp_path: Path, small_grid: TargetGrid
) -> None:
    old = publish_version(runs["a1"], tmp_path).directory
    intact = (old / "Mo_sd.tif").read_bytes()
    flip_byte(old / "Mo_sd.tif")
    new = publish_version(runs["b2"], tmp_path)  # same maps, another run: files are linked
    assert [(d.path, d.problem) for d in new.damaged] == [
        (old / "Mo_sd.tif", "content differs from its SHA-256 recorded when written")
    ]
    assert new.reused == ()  # not every file of Mo could be linked
    assert inode(new.directory / "Mo_sd.tif") != inode(old / "Mo_sd.tif")
    for name in ("Mo_mean.tif", "Mo_variance.tif", "Mo_unseen.tif", "Mo_quicklook.png"):
        assert inode(new.directory / name) == inode(old / name)
    with rasterio.open(new.directory / "Mo_sd.tif") as cog:
        np.testing.assert_array_equal(cog.read(1), known_layers(small_grid, "Mo")["sd"])
    assert (new.directory / "Mo_sd.tif").read_bytes() == intact  # rendered as it was first
    assert verify_version(new.directory) == []


def test_publishing_the_current_run_again_repairs_a_damaged_file(
    runs: dict[str, Path], tmp_path: Path, small_grid: TargetGrid
) -> None:
    written: list[Path] = []

    def report(folder: Path) -> None:
        written.append(folder)
        fake_report(folder)

    old = publish_version(runs["a1"], tmp_path, report=report).directory
    flip_byte(old / "Mo_mean.tif")
    repaired = publish_version(runs["a1"], tmp_path, report=report)
    assert repaired.new
    assert current_version(tmp_path) == repaired.directory != old
    assert [d.path for d in repaired.damaged] == [old / "Mo_mean.tif"]
    assert inode(repaired.directory / "Mo_mean.tif") != inode(old / "Mo_mean.tif")
    with rasterio.open(repaired.directory / "Mo_mean.tif") as cog:
        np.testing.assert_array_equal(cog.read(1), known_layers(small_grid, "Mo")["mean"])
    # Everything intact is linked, the report too: it was written once.
    for name in ("Mo_sd.tif", "Mo_quicklook.png", "report/report.html", "report/figures/map.png"):
        assert inode(repaired.directory / name) == inode(old / name)
    assert inode(repaired.directory / CHUNK) == inode(old / CHUNK)
    assert len(written) == 1
    assert verify_version(repaired.directory) == []
    # The new version's manifest is a file of its own: the old one's was not written through.
    assert [d.path for d in verify_version(old)] == [old / "Mo_mean.tif"]
    again = publish_version(runs["a1"], tmp_path, report=report)
    assert (again.new, again.directory) == (False, repaired.directory)


def delete(path: Path) -> None:
    path.unlink()


def add_stray(path: Path) -> None:
    path.write_bytes(b"not ours")


@pytest.mark.parametrize(
    ("damage", "name"),
    [
        (delete, "report/figures/map.png"),
        (flip_byte, CHUNK),
        (add_stray, "report/figures/extra.png"),
        (flip_byte, "report/SHA256SUMS"),
    ],
)
def test_a_damaged_report_of_the_current_run_is_written_again_whole(
    runs: dict[str, Path], tmp_path: Path, damage: Callable[[Path], None], name: str
) -> None:
    old = publish_version(runs["a1"], tmp_path, report=fake_report).directory
    damage(old / name)
    repaired = publish_version(runs["a1"], tmp_path, report=fake_report)
    assert [d.path for d in repaired.damaged] == [old / name]
    # Not one file of the report is linked: its intact files belong to it alone.
    for listed in LISTED:
        path = Path("report") / listed
        assert (repaired.directory / path).is_file()
        if (old / path).exists():
            assert inode(repaired.directory / path) != inode(old / path)
    assert not (repaired.directory / "report" / "figures" / "extra.png").exists()
    assert inode(repaired.directory / "Mo_mean.tif") == inode(old / "Mo_mean.tif")
    assert verify_version(repaired.directory) == []


def test_a_version_listing_each_report_file_as_an_asset_is_checked_and_its_report_reused(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    written: list[Path] = []

    def report(folder: Path) -> None:
        written.append(folder)
        fake_report(folder)

    old = publish_version(runs["a1"], tmp_path, report=report).directory
    # As versions were published before SHA256SUMS: every file of the report an asset.
    item = json.loads((old / STAC_ITEM).read_text())
    del item["assets"]["report/SHA256SUMS"]
    (old / "report" / "SHA256SUMS").unlink()
    for name in LISTED:
        data = (old / "report" / name).read_bytes()
        item["assets"][f"report/{name}"] = {
            "href": f"./report/{name}",
            "file:size": len(data),
            "file:checksum": "1220" + hashlib.sha256(data).hexdigest(),
        }
    (old / STAC_ITEM).write_text(json.dumps(item))
    assert verify_version(old) == []
    flip_byte(old / CHUNK)
    assert [(d.path, d.problem) for d in verify_version(old)] == [(old / CHUNK, DIFFERS)]
    flip_byte(old / CHUNK)  # flipped back

    flip_byte(old / "Mo_mean.tif")
    repaired = publish_version(runs["a1"], tmp_path, report=report).directory
    assert len(written) == 1
    assert inode(repaired / CHUNK) == inode(old / CHUNK)
    assert list(read_manifest(repaired / "report" / "SHA256SUMS")) == list(LISTED)
    assets = json.loads((repaired / STAC_ITEM).read_text())["assets"]
    assert len([name for name in assets if name.startswith("report/")]) == 3
    assert not (old / "report" / "SHA256SUMS").exists()
    assert verify_version(repaired) == []


#: Publishes a run and is SIGKILLed while its report is written (argv: prediction, root).
KILLED_WHILE_PUBLISHING = """
import os, signal, sys
from pathlib import Path
from tpgrid.publication import publish_version

def report(folder: Path) -> None:
    folder.mkdir()
    (folder / "report.html").write_text("half a page")
    os.kill(os.getpid(), signal.SIGKILL)

publish_version(sys.argv[1], sys.argv[2], report=report)
"""


@pytest.mark.slow
def test_a_publication_killed_midway_is_no_version_and_the_next_one_removes_it(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    first = publish_version(runs["a1"], tmp_path, report=fake_report)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_PUBLISHING, str(runs["b2"]), str(tmp_path)],
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    (partial,) = (tmp_path / "versions").glob(".*.partial-*")
    assert (partial / "Mo_mean.tif").is_file()  # the maps were there, no item
    assert versions(tmp_path) == [first.directory]
    assert current_version(tmp_path) == first.directory
    assert verify_version(first.directory) == []
    assert prune(tmp_path, keep=1) == []
    assert partial.is_dir()

    second = publish_version(runs["b2"], tmp_path, report=fake_report)
    assert second.removed == (partial.name,)
    assert not partial.exists()
    assert versions(tmp_path) == [first.directory, second.directory]
    assert current_version(tmp_path) == second.directory
    assert verify_version(second.directory) == []


def test_a_version_folder_without_its_item_is_not_a_version(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    first = publish_version(runs["a1"], tmp_path)
    (tmp_path / "versions" / "20000101T000000.000000Z-unfinished").mkdir()
    assert versions(tmp_path) == [first.directory]
