"""A blob's tensors straight into serialised chunk messages, without building the blob.

The sender hashes the blob from the tensors' own memory (header, then each tensor's bytes: the
bytes the blob would hold, never concatenated), then writes each message as its prefix followed
by slices of that memory: one copy per payload byte, into the message gRPC sends. Chunk 0 must
carry the digest (every chunk repeats it, see common/chunking.py), so a blob is hashed just
before it is framed, one blob (layer) at a time, while its bytes are still in cache.
"""

from __future__ import annotations

from collections.abc import Iterator

from common import wire
from common.chunking import BlobKey
from common.codec import BlobBytes, Layout
from common.digest import DigestName
from common.digest import digest as digest_of


def digest_layout(layout: Layout, algorithm: DigestName) -> bytes:
    """The digest of the blob `layout` describes, from its pieces (no blob is built)."""
    return digest_of(algorithm, *layout.pieces)


def _payloads(layout: Layout, chunk_size: int) -> Iterator[list[BlobBytes]]:
    """Each chunk's payload as the slices of the layout's pieces it spans (views, no copy)."""
    current: list[BlobBytes] = []
    room = chunk_size
    for piece in layout.pieces:
        view = memoryview(piece)
        pos = 0
        while pos < len(view):
            take = min(room, len(view) - pos)
            current.append(view[pos : pos + take])
            pos, room = pos + take, room - take
            if room == 0:
                yield current
                current, room = [], chunk_size
    if current:
        yield current


def frames(
    layout: Layout, key: BlobKey, chunk_size: int, algorithm: DigestName, push: bool, digest: bytes | None = None
) -> Iterator[bytes]:
    """The serialised Chunk messages of one blob (`push`: PushUpdateRequest{chunk} messages),
    byte for byte what `chunking.split` + `wire.encode_chunk` make of the built blob. `digest`:
    the blob's, when the caller already knows it (else computed here first)."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    digest = digest_layout(layout, algorithm) if digest is None else digest
    total = max(1, -(-layout.size // chunk_size))
    for index, payload in enumerate(_payloads(layout, chunk_size)):
        size = sum(len(p) for p in payload)
        prefix = wire.chunk_prefix(key, index, total, digest, layout.size, size, push)
        yield b"".join((prefix, *payload))  # the one copy of a sent byte
