"""Atomic, durable writes (a failed write changes nothing, leaves no temp file) and JSON lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from visnet import io
from visnet.io import (
    JsonLinesError,
    atomic_open,
    atomic_path,
    read_jsonl,
    replace_folder,
    staging_folder,
    write_bytes_atomic,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writers_round_trip(tmp_path: Path) -> None:
    assert write_bytes_atomic(tmp_path / "b.bin", b"\x00\xff").read_bytes() == b"\x00\xff"
    assert write_text_atomic(tmp_path / "t.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    data = {"a": [1, 2.5, None], "b": "ü"}
    path = write_json_atomic(tmp_path / "d.json", data)
    assert json.loads(path.read_text()) == data and path.read_text().endswith("}\n")
    assert write_json_atomic(tmp_path / "i.json", [1], indent=None).read_text() == "[1]\n"
    rows = [{"x": 1}, {"y": "ü"}]
    assert write_jsonl_atomic(tmp_path / "r.jsonl", rows, ensure_ascii=False) == 2
    assert (tmp_path / "r.jsonl").read_text(encoding="utf-8") == '{"x": 1}\n{"y": "ü"}\n'
    assert [obj for _, obj in read_jsonl(tmp_path / "r.jsonl")] == rows
    assert _names(tmp_path) == ["b.bin", "d.json", "i.json", "r.jsonl", "t.txt"]


def test_a_second_write_replaces_the_first(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and _names(tmp_path) == ["f.txt"]


def test_atomic_path_gives_path_writers_a_temp_file_with_the_suffix(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    with atomic_path(tmp_path / "a.npy") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp.name.startswith(".")
        np.save(tmp, array)  # a path without .npy would get one appended
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    assert _names(tmp_path) == ["a.npy"]


def test_atomic_open_text_keeps_newline_choice(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "c.csv", newline="") as f:
        f.write("a,b\r\n")
    assert (tmp_path / "c.csv").read_bytes() == b"a,b\r\n"
    with pytest.raises(ValueError, match="mode must be"), atomic_open(tmp_path / "x", "a"):
        pass


@pytest.mark.parametrize("how", ["bytes", "jsonl", "path", "open"])
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path, how: str) -> None:
    path = tmp_path / "keep.json"
    path.write_text("old")

    def rows():
        yield {"a": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        if how == "jsonl":
            write_jsonl_atomic(path, rows())
        elif how == "path":
            with atomic_path(path) as tmp:
                tmp.write_text("half")
                raise RuntimeError("boom")
        elif how == "open":
            with atomic_open(path) as f:
                f.write("half")
                raise RuntimeError("boom")
        else:
            with atomic_open(path, "wb") as f:
                f.write(b"half")
                raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["keep.json"]


def test_a_failed_rename_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def fail(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old" and _names(tmp_path) == ["keep.txt"]


def test_a_path_writer_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "never.bin"):
        pass
    assert _names(tmp_path) == []


def test_writes_are_fsynced_file_then_folder(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(io.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        io.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1]
    )
    write_text_atomic(tmp_path / "f.txt", "x")
    assert calls == ["fsync", "replace", "fsync"]
    calls.clear()
    with atomic_path(tmp_path / "g.bin") as tmp:
        tmp.write_bytes(b"x")
    assert calls == ["fsync", "replace", "fsync"]


def test_replace_folder_swaps_a_complete_folder_in(tmp_path: Path) -> None:
    out = tmp_path / "set"
    (out / "old").mkdir(parents=True)
    stale = tmp_path / "set.partial"
    stale.mkdir()
    (stale / "leftover").write_text("x")
    staging = staging_folder(out)
    assert staging == stale and not staging.exists()
    (staging / "new").mkdir(parents=True)
    replace_folder(staging, out)
    assert _names(out) == ["new"] and _names(tmp_path) == ["set"]


def test_read_jsonl_numbers_lines_and_skips_blank_ones(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"b": 2}\n', encoding="utf-8")
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, {"b": 2})]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert list(read_jsonl(bom, encoding="utf-8-sig")) == [(1, {"a": 1})]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"a": 1}\n{"a": ]\n', "bad JSON: Expecting value (column 7)"),
        ('{"a": 1}\n[1, 2]\n', "expected a JSON object, got list"),
    ],
)
def test_read_jsonl_names_the_file_and_line_of_a_bad_line(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(JsonLinesError) as info:
        list(read_jsonl(path))
    assert str(info.value) == f"{path}: line 2: {problem}"
    assert (info.value.path, info.value.line) == (path, 2)
    assert isinstance(info.value, ValueError)


def test_make_folders_fsyncs_the_parent_of_each_new_folder(tmp_path: Path, monkeypatch) -> None:
    synced: list[Path] = []
    real = io.fsync_dir
    monkeypatch.setattr(io, "fsync_dir", lambda p: (synced.append(Path(p)), real(p))[1])
    assert io.make_folders(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and synced == [tmp_path, tmp_path / "a"]
    synced.clear()
    io.make_folders(tmp_path / "a" / "b")  # already there: nothing to make durable
    assert synced == []


def test_temp_names_are_recognised_and_nothing_else(tmp_path: Path) -> None:
    seen: list[str] = []
    with atomic_path(tmp_path / "x.jpg") as tmp:
        seen.append(tmp.name)
        tmp.write_bytes(b"x")
    with atomic_path(tmp_path / "CURRENT") as tmp:  # no suffix
        seen.append(tmp.name)
        tmp.write_bytes(b"x")
    assert all(io.is_temp_name(name) for name in seen)
    for name in ("x.jpg", ".x.jpg", "abc-0.jpg", ".x.tmp.jpg", "x.0123456789ab.tmp.jpg"):
        assert not io.is_temp_name(name), name
