"""Instruction / response pairs for causal-LM tasks: the record type and its JSONL reader / writer.

A line is a JSON object with a prompt and a response field (names configurable). Optional
`scorer` (a reasoning-gym dataset name) and `entry` (that dataset's entry: question, answer,
metadata) let the worker score generated answers with the dataset's own scorer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.data.files import iter_jsonl_objects

__all__ = ["PromptExample", "read_prompt_examples", "first_record_keys", "write_prompt_jsonl"]


@dataclass(frozen=True)
class PromptExample:
    """One instruction and its reference response (plus what scores an answer to it, if known)."""

    prompt: str
    response: str
    scorer: str | None = None
    entry: dict[str, Any] | None = field(default=None, compare=False, hash=False)


def read_prompt_examples(path: Path, prompt_field: str = "prompt", response_field: str = "response") -> list[PromptExample]:
    """Read a JSONL file of prompt/response objects; ValueError names file, line and field."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"{path}: causal_lm data must be .jsonl, got {path.suffix!r}")
    out: list[PromptExample] = []
    for line_no, row in iter_jsonl_objects(path):
        for name in (prompt_field, response_field):
            if not isinstance(row.get(name), str):
                raise ValueError(f"{path}: line {line_no}: field {name!r} must be a string")
        scorer, entry = row.get("scorer"), row.get("entry")
        out.append(
            PromptExample(
                row[prompt_field],
                row[response_field],
                scorer if isinstance(scorer, str) else None,
                entry if isinstance(entry, dict) else None,
            )
        )
    return out


def first_record_keys(path: Path) -> set[str]:
    """The keys of the first JSON object of a .jsonl file (empty for anything else)."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl" or not path.exists():
        return set()
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return set()
                return set(row) if isinstance(row, dict) else set()
    return set()


def write_prompt_jsonl(path: Path, examples: Iterable[PromptExample]) -> Path:
    """Write examples as JSON lines {"prompt", "response"[, "scorer", "entry"]}; creates parent dirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            row: dict[str, Any] = {"prompt": ex.prompt, "response": ex.response}
            if ex.scorer:
                row["scorer"] = ex.scorer
            if ex.entry is not None:
                row["entry"] = ex.entry
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
