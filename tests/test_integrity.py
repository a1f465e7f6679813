"""File records and checks: a record matches its file until a byte changes, goes or appears."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tpgrid.integrity import FileRecord, check_file, check_files, file_record


def test_record_is_size_and_sha256(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # more than one read piece
    path = tmp_path / "chunk"
    path.write_bytes(data)
    record = file_record(path)
    assert record == FileRecord(len(data), hashlib.sha256(data).hexdigest())
    assert record.multihash == "1220" + hashlib.sha256(data).hexdigest()
    assert FileRecord.from_json(record.to_json()) == record
    assert check_file(path, record) is None


def test_flipped_byte_truncation_and_removal_are_damage(tmp_path: Path) -> None:
    path = tmp_path / "chunk"
    path.write_bytes(b"abcdef" * 100)
    record = file_record(path)
    data = bytearray(path.read_bytes())
    data[123] ^= 0x01
    path.write_bytes(bytes(data))
    damage = check_file(path, record)
    assert damage is not None
    assert "SHA-256" in damage.problem
    assert str(path) in str(damage)
    path.write_bytes(b"abc")
    damage = check_file(path, record)
    assert damage is not None
    assert damage.problem == "3 bytes, 600 when written"
    path.unlink()
    damage = check_file(path, record)
    assert damage is not None
    assert damage.problem == "missing"


def test_a_file_where_none_was_written_is_damage(tmp_path: Path) -> None:
    assert check_file(tmp_path / "absent", None) is None
    (tmp_path / "stray").write_bytes(b"x")
    records: dict[str, FileRecord | None] = {"stray": None, "absent": None}
    assert [d.path.name for d in check_files(tmp_path, records)] == ["stray"]
