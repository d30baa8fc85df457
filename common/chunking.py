"""Cut blobs into tagged chunks and reassemble them with order, size and digest checks."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from common.codec import sha256
from common.errors import InvalidArgument

DEFAULT_CHUNK_SIZE = 1 << 20  # 1 MiB: well under gRPC's 4 MiB default message limit


class Role(enum.IntEnum):
    """What a blob is for; values match the proto enum fedtree.v1.Role."""

    CLUSTER = 1
    EXTERNAL = 2
    UPDATE = 3


@dataclass(frozen=True)
class BlobKey:
    round: int
    layer: int
    role: Role


@dataclass(frozen=True)
class ChunkData:
    """One piece of a blob with the tags that let the receiver check it."""

    key: BlobKey
    index: int
    total: int
    digest: bytes
    blob_size: int
    data: bytes | memoryview  # a view when cut from a blob or parsed off the wire: no copy


def split(blob: bytes, key: BlobKey, chunk_size: int = DEFAULT_CHUNK_SIZE, digest: bytes | None = None) -> Iterator[ChunkData]:
    """Yield the chunks of one blob as zero-copy views of it; the digest is computed once per
    blob (or passed in by a caller that already knows it, e.g. a cache serving many workers)."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    digest = sha256(blob) if digest is None else digest
    view = memoryview(blob)
    total = max(1, -(-len(blob) // chunk_size))
    for index in range(total):
        yield ChunkData(key, index, total, digest, len(blob), view[index * chunk_size : (index + 1) * chunk_size])


class Assembler:
    """Reassembles a stream of chunks, blob after blob, rejecting anything out of order.

    Chunks of one blob must arrive contiguously with index 0..total-1; every chunk must repeat
    the first one's tags. A completed blob is checked against its size and sha256.
    """

    def __init__(self, max_blob_bytes: int) -> None:
        self._max_blob_bytes = max_blob_bytes
        self._first: ChunkData | None = None
        self._parts: list[bytes | memoryview] = []
        self._received = 0

    @property
    def in_progress(self) -> bool:
        return self._first is not None

    def feed(self, chunk: ChunkData) -> tuple[BlobKey, bytes] | None:
        """Add a chunk; return (key, blob) when it completes a blob, else None."""
        first = self._first
        if first is None:
            self._start(chunk)
            first = chunk
        else:
            expected = len(self._parts)
            if chunk.key != first.key:
                raise InvalidArgument(
                    f"chunk for {_describe(chunk.key)} arrived while blob {_describe(first.key)} was "
                    f"incomplete ({expected}/{first.total} chunks)"
                )
            if chunk.index != expected:
                raise InvalidArgument(
                    f"chunks out of order for {_describe(first.key)}: expected index {expected}, got {chunk.index}"
                )
            if (chunk.total, chunk.digest, chunk.blob_size) != (first.total, first.digest, first.blob_size):
                raise InvalidArgument(f"chunk {chunk.index} of {_describe(first.key)} disagrees with chunk 0's tags")
        self._parts.append(chunk.data)
        self._received += len(chunk.data)
        if self._received > first.blob_size:
            raise InvalidArgument(f"{_describe(first.key)}: received more bytes than the announced {first.blob_size}")
        if len(self._parts) < first.total:
            return None
        only = self._parts[0]
        blob = only if len(self._parts) == 1 and isinstance(only, bytes) else b"".join(self._parts)  # one copy
        self._first, self._parts, self._received = None, [], 0
        if len(blob) != first.blob_size:
            raise InvalidArgument(f"{_describe(first.key)}: size {len(blob)} != announced {first.blob_size}")
        if sha256(blob) != first.digest:
            raise InvalidArgument(f"{_describe(first.key)}: sha256 mismatch, blob corrupted in transit")
        return first.key, blob

    def finish(self) -> None:
        """Call at end of stream: a half-received blob is an error (truncated stream)."""
        if self._first is not None:
            raise InvalidArgument(
                f"stream ended inside {_describe(self._first.key)} after {len(self._parts)}/{self._first.total} chunks"
            )

    def _start(self, chunk: ChunkData) -> None:
        if chunk.index != 0:
            raise InvalidArgument(f"chunks out of order for {_describe(chunk.key)}: first chunk has index {chunk.index}")
        if chunk.total < 1 or chunk.total > chunk.blob_size + 1:
            raise InvalidArgument(f"{_describe(chunk.key)}: implausible chunk total {chunk.total}")
        if chunk.blob_size > self._max_blob_bytes:
            raise InvalidArgument(
                f"{_describe(chunk.key)}: blob of {chunk.blob_size} bytes exceeds the limit of {self._max_blob_bytes}"
            )
        if len(chunk.digest) != 32:
            raise InvalidArgument(f"{_describe(chunk.key)}: sha256 must be 32 bytes, got {len(chunk.digest)}")
        self._first = chunk


def assemble_all(chunks: Iterable[ChunkData], max_blob_bytes: int) -> Iterator[tuple[BlobKey, bytes]]:
    """Reassemble every blob of a finite chunk stream."""
    assembler = Assembler(max_blob_bytes)
    for chunk in chunks:
        done = assembler.feed(chunk)
        if done is not None:
            yield done
    assembler.finish()


def _describe(key: BlobKey) -> str:
    return f"round {key.round} layer {key.layer} role {key.role.name.lower()}"
