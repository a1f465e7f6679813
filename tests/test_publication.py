"""Published versions: a reader of `current` sees one complete version, never a mix."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.conftest import SMALL_SPEC
from tests.run_groups import write_run_group
from tpgrid.errors import OutputExistsError
from tpgrid.grid import TargetGrid
from tpgrid.outputs import STAC_ITEM
from tpgrid.publication import current_version, prune, publish_version, versions

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
