"""Reading and writing labelled examples from user-supplied ``.jsonl`` / ``.csv`` files."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from worker.data.types import Example

logger = logging.getLogger(__name__)

__all__ = ["SUPPORTED_EXTENSIONS", "read_examples", "write_jsonl"]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".jsonl", ".csv")


def _to_example(row: Mapping[str, Any], path: Path, line_no: int, text_field: str, label_field: str) -> Example:
    """Build an :class:`Example` from a parsed row, naming file/line/field on error."""
    for field in (text_field, label_field):
        if row.get(field) is None:
            raise ValueError(f"{path}: line {line_no}: missing field {field!r}")
    text = row[text_field]
    if not isinstance(text, str):
        raise ValueError(f"{path}: line {line_no}: field {text_field!r} must be a string, got {type(text).__name__}")
    return Example(text=text, label=str(row[label_field]))


def iter_jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; ValueError names file and line otherwise."""
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {line_no}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def _read_jsonl(path: Path, text_field: str, label_field: str) -> list[Example]:
    return [_to_example(row, path, line_no, text_field, label_field) for line_no, row in iter_jsonl_objects(path)]


def _read_csv(path: Path, text_field: str, label_field: str) -> list[Example]:
    examples: list[Example] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for field in (text_field, label_field):
            if field not in header:
                raise ValueError(f"{path}: line 1: missing field {field!r} in CSV header {header}")
        for row in reader:
            examples.append(_to_example(row, path, reader.line_num, text_field, label_field))
    return examples


def read_examples(path: Path, text_field: str = "text", label_field: str = "label") -> list[Example]:
    """Read labelled examples from a ``.jsonl`` or ``.csv`` file.

    Labels are converted with ``str()``. Raises ``ValueError`` naming the file, line
    number and field when a row lacks a field, or when the extension is unsupported.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        examples = _read_jsonl(path, text_field, label_field)
    elif suffix == ".csv":
        examples = _read_csv(path, text_field, label_field)
    else:
        raise ValueError(f"{path}: unsupported file extension {path.suffix!r}; expected one of {', '.join(SUPPORTED_EXTENSIONS)}")
    logger.debug("read %d examples from %s", len(examples), path)
    return examples


def write_jsonl(path: Path, examples: Iterable[Example]) -> Path:
    """Write examples as JSON lines ``{"text": ..., "label": ...}``; creates parent dirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps({"text": ex.text, "label": ex.label}, ensure_ascii=False) + "\n")
            count += 1
    logger.debug("wrote %d examples to %s", count, path)
    return path
