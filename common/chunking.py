"""Cut blobs into tagged chunks and reassemble them with order, size and digest checks.

Reassembly copies each chunk once, into one buffer per blob, and feeds the blob's running digest
as the chunk lands: verifying a blob ends with its last chunk, and the buffer it hands back is
what `codec.decode` makes tensors of, without another copy.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from common.buffers import BufferPool, empty_buffer
from common.digest import DEFAULT_DIGEST, DIGEST_SIZE, DigestName, Hasher, hasher
from common.digest import digest as digest_of
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


def split(
    blob: bytes,
    key: BlobKey,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    digest: bytes | None = None,
    algorithm: DigestName = DEFAULT_DIGEST,
) -> Iterator[ChunkData]:
    """Yield the chunks of one whole blob as zero-copy views of it; its digest (`algorithm`) is
    computed once (or passed in by a caller that already knows it). The transfer path does not
    build whole blobs: common/framing.py frames tensors directly."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    digest = digest_of(algorithm, blob) if digest is None else digest
    view = memoryview(blob)
    total = max(1, -(-len(blob) // chunk_size))
    for index in range(total):
        yield ChunkData(key, index, total, digest, len(blob), view[index * chunk_size : (index + 1) * chunk_size])


class Assembler:
    """Reassembles a stream of chunks, blob after blob, rejecting anything out of order.

    Chunks of one blob must arrive contiguously with index 0..total-1; every chunk must repeat
    the first one's tags. Each chunk is copied into the blob's buffer and fed to its running
    digest (`algorithm`) as it arrives; a completed blob is checked against its size and digest.
    The buffer is taken when the blob's first chunk arrives (from `pool`, when given: memory an
    earlier blob used, common/buffers.py) but only written as bytes land, so an announced size (at
    most `max_blob_bytes`) costs fresh memory only once it is sent.
    """

    def __init__(self, max_blob_bytes: int, algorithm: DigestName = DEFAULT_DIGEST, pool: BufferPool | None = None) -> None:
        self._max_blob_bytes = max_blob_bytes
        self.algorithm: DigestName = algorithm
        self._pool = pool
        self._first: ChunkData | None = None
        self._count = 0
        self._received = 0
        self._buffer = memoryview(b"")
        self._hasher: Hasher | None = None

    @property
    def in_progress(self) -> bool:
        return self._first is not None

    def feed(self, chunk: ChunkData) -> tuple[BlobKey, memoryview] | None:
        """Add a chunk; return (key, blob) when it completes a blob, else None. The blob is a
        writable view of a buffer of its own (decode makes tensors of it without a copy)."""
        first = self._first
        if first is None:
            self._start(chunk)
            first = chunk
        else:
            expected = self._count
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
        size = len(chunk.data)
        end = self._received + size
        if end > first.blob_size:
            raise InvalidArgument(f"{_describe(first.key)}: received more bytes than the announced {first.blob_size}")
        landed = self._buffer[self._received : end]
        landed[:] = chunk.data  # the one copy of a received byte
        assert self._hasher is not None
        self._hasher.update(landed)  # hashed while it is still in cache
        self._received, self._count = end, self._count + 1
        if self._count < first.total:
            return None
        blob, received, hasher_ = self._buffer, self._received, self._hasher
        self._first, self._count, self._received, self._buffer, self._hasher = None, 0, 0, memoryview(b""), None
        if received != first.blob_size:
            raise InvalidArgument(f"{_describe(first.key)}: size {received} != announced {first.blob_size}")
        if hasher_.digest() != first.digest:
            raise InvalidArgument(f"{_describe(first.key)}: {self.algorithm} digest mismatch, blob corrupted in transit")
        return first.key, blob

    def finish(self) -> None:
        """Call at end of stream: a half-received blob is an error (truncated stream)."""
        if self._first is not None:
            raise InvalidArgument(
                f"stream ended inside {_describe(self._first.key)} after {self._count}/{self._first.total} chunks"
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
        if len(chunk.digest) != DIGEST_SIZE:
            raise InvalidArgument(
                f"{_describe(chunk.key)}: the {self.algorithm} digest must be {DIGEST_SIZE} bytes, got {len(chunk.digest)}"
            )
        self._first = chunk
        if self._pool is not None:
            self._buffer = self._pool.take(chunk.blob_size)
        else:  # allocated, not written: pages are only touched as chunks land
            self._buffer = empty_buffer(chunk.blob_size).data
        self._hasher = hasher(self.algorithm)


def assemble_all(
    chunks: Iterable[ChunkData], max_blob_bytes: int, algorithm: DigestName = DEFAULT_DIGEST, pool: BufferPool | None = None
) -> Iterator[tuple[BlobKey, memoryview]]:
    """Reassemble every blob of a finite chunk stream."""
    assembler = Assembler(max_blob_bytes, algorithm, pool)
    for chunk in chunks:
        done = assembler.feed(chunk)
        if done is not None:
            yield done
    assembler.finish()


def _describe(key: BlobKey) -> str:
    return f"round {key.round} layer {key.layer} role {key.role.name.lower()}"
