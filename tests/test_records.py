"""The one JSONL reader: a torn last line is skipped (or repaired), any other bad line is named."""

from __future__ import annotations

import pytest

from ragtune.errors import RagtuneError
from ragtune.records import read_jsonl, read_text_file, write_jsonl


def test_a_torn_last_line_is_skipped_and_repaired_only_when_asked(tmp_path, capsys):
    f = tmp_path / "rows.jsonl"
    f.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert list(read_jsonl(f)) == [{"a": 1}, {"a": 2}]
    assert "line 3 is cut short" in capsys.readouterr().err and f.read_bytes().endswith(b'"b"')
    assert list(read_jsonl(f, repair=True)) == [{"a": 1}, {"a": 2}]
    assert f.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    f.write_bytes(b'{"a": 1}')  # no newline but whole: a hand-written file, kept
    assert list(read_jsonl(f)) == [{"a": 1}]


def test_other_bad_lines_and_encodings_are_named(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(RagtuneError, match=r"rows.jsonl line 2: not valid JSON"):
        list(read_jsonl(f))
    f.write_bytes('{"a": "é"}\n'.encode("latin-1"))
    with pytest.raises(RagtuneError, match=r"rows.jsonl line 1: not UTF-8"):
        list(read_jsonl(f))
    f.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')  # a BOM is accepted
    assert list(read_jsonl(f)) == [{"a": 1}]
    t = tmp_path / "t.txt"
    t.write_bytes(b"ok\nstill ok\n\xff\n")
    with pytest.raises(RagtuneError, match=r"t.txt line 3: not UTF-8 \(byte 0xff\)"):
        read_text_file(t)


def test_write_jsonl_leaves_no_temp_file_and_keeps_the_mode(tmp_path):
    f = tmp_path / "rows.jsonl"
    write_jsonl(f, [{"a": 1}])
    f.chmod(0o640)
    write_jsonl(f, [{"a": 2}])
    assert list(read_jsonl(f)) == [{"a": 2}] and oct(f.stat().st_mode & 0o777) == "0o640"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]
