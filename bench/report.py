"""docs/BENCHMARKS.md blocks: a benchmark rewrites only the text between its own markers."""

from __future__ import annotations

from pathlib import Path


def write_block(doc: Path, begin: str, end: str, body: str, heading: str) -> None:
    """Put `body` between the `begin` and `end` markers of `doc`; append a `heading` section with
    the markers when they are not there yet. Everything outside the markers is left as it is."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n{block}\n"
    doc.write_text(text)
