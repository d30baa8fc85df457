"""The Admin export's file stream: cut with a sha256 per file, checked by the CLI before it writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.errors import InvalidArgument
from coordinator.admin_cli import save_files
from coordinator.file_chunks import split_files
from proto.fedtree.v1 import admin_pb2 as apb

CONFIG = b'{"r": 8}'
WEIGHTS = bytes(range(256)) * 10  # 2560 bytes: 3 pieces of 1024


def stream(files: list[tuple[str, bytes]] | None = None) -> list[apb.FileChunk]:
    """What AdminView.export sends (coordinator/admin.py), with small pieces."""
    files = files or [("adapter_config.json", CONFIG), ("adapter_model.safetensors", WEIGHTS)]
    return [
        apb.FileChunk(path=p.path, index=p.index, total=p.total, data=p.data, sha256=p.digest)
        for p in split_files(files, chunk_size=1024)
    ]


def test_round_trip(tmp_path: Path) -> None:
    chunks = stream([("adapter_config.json", CONFIG), ("adapter_model.safetensors", WEIGHTS), ("empty", b"")])
    assert [c.total for c in chunks] == [1, 3, 3, 3, 1]
    assert save_files(chunks, tmp_path / "out") == ["adapter_config.json", "adapter_model.safetensors", "empty"]
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == WEIGHTS
    assert (tmp_path / "out" / "empty").read_bytes() == b""


def swapped(chunks: list[apb.FileChunk]) -> list[apb.FileChunk]:
    return [*chunks[:2], chunks[3], chunks[2]]


def corrupted(chunks: list[apb.FileChunk]) -> list[apb.FileChunk]:
    bad = apb.FileChunk()
    bad.CopyFrom(chunks[2])
    bad.data = bytes([bad.data[0] ^ 0xFF]) + bad.data[1:]
    return [*chunks[:2], bad, *chunks[3:]]


def other_digest(chunks: list[apb.FileChunk]) -> list[apb.FileChunk]:
    bad = apb.FileChunk()
    bad.CopyFrom(chunks[3])
    bad.sha256 = bytes(32)
    return [*chunks[:3], bad]


def interleaved(chunks: list[apb.FileChunk]) -> list[apb.FileChunk]:
    return [chunks[1], chunks[0], *chunks[2:]]


CASES = {
    "out of order": (swapped, "out of order: expected index 1, got 2"),
    "bad digest": (corrupted, "sha256 mismatch"),
    "digest changes midway": (other_digest, "disagrees with piece 0"),
    "truncated": (lambda c: c[:-1], "stream ended inside 'adapter_model.safetensors' after 2/3"),
    "interleaved": (interleaved, "arrived while 'adapter_model.safetensors' was incomplete"),
    "sent twice": (lambda c: c + c[:1], "sent twice"),
    "no digest (an old coordinator)": (
        lambda c: [apb.FileChunk(path=x.path, index=x.index, total=x.total, data=x.data) for x in c],
        "sha256 of 0 bytes",
    ),
    "outside the target": (lambda c: stream([("../escape", CONFIG)]), "refusing to write outside"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_stream_is_refused_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    mangle, words = CASES[case]
    with pytest.raises(InvalidArgument, match=re.escape(words)):
        save_files(mangle(stream()), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape").exists()
