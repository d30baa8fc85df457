"""Unit tests for worker.data.files (jsonl/csv readers and writer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.data import Example, read_examples, write_jsonl

EXAMPLES = [Example("hello world", "a"), Example('ünïcödé, "quoted"\nnewline', "b"), Example("x", "a")]


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sub" / "data.jsonl", EXAMPLES)
    assert read_examples(path) == EXAMPLES


def test_jsonl_custom_fields_and_str_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"sentence": "s1", "y": 1}\n\n{"sentence": "s2", "y": 0}\n', encoding="utf-8")
    assert read_examples(path, text_field="sentence", label_field="y") == [Example("s1", "1"), Example("s2", "0")]


def test_csv_round_trip(tmp_path: Path) -> None:
    import csv

    path = tmp_path / "data.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["label", "text", "extra"])
        writer.writeheader()
        for ex in EXAMPLES:
            writer.writerow({"label": ex.label, "text": ex.text, "extra": "z"})
    assert read_examples(path) == EXAMPLES


def test_jsonl_missing_field_names_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    rows = [{"text": "ok", "label": "a"}, {"text": "no label"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl.*line 2.*'label'"):
        read_examples(path)


def test_csv_missing_value_names_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nfine,a\nshort row\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.csv.*line 3.*'label'"):
        read_examples(path)


def test_csv_missing_header_field(tmp_path: Path) -> None:
    path = tmp_path / "nohdr.csv"
    path.write_text("text,category\nfine,a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"nohdr\.csv.*line 1.*'label'"):
        read_examples(path)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("whatever\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\.txt.*unsupported"):
        read_examples(path)
