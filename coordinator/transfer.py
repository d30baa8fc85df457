"""Coordinator side of the wire format: encode downloads once, receive and validate uploads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from common import blobs, codec, framing
from common.buffers import BufferPool
from common.chunking import Assembler, BlobKey, ChunkData, Role
from common.digest import DEFAULT_DIGEST, DigestName
from common.errors import InvalidArgument
from common.schema import HEAD_LAYER, Schema
from common.types import PushHeader
from coordinator.strategies import Download
from coordinator.strategies.base import LayerTensors

DEFAULT_CACHE_BYTES = 512 << 20


@dataclass(frozen=True)
class EncodedDownload:
    """One download blob, ready to stream: its serialised Chunk messages, kept (`frames`), or,
    past the cache's byte budget, framed again for each stream from its tensors (`layout`) with
    the digest computed once. `nbytes`: the blob's size."""

    key: BlobKey
    chunk_size: int
    digest: bytes
    nbytes: int
    frames: tuple[bytes, ...] | None = None
    layout: codec.Layout | None = None

    def messages(self) -> Iterator[bytes]:
        if self.frames is not None:
            return iter(self.frames)
        assert self.layout is not None
        return framing.frames(self.layout, self.key, self.chunk_size, DEFAULT_DIGEST, push=False, digest=self.digest)


class BlobCache:
    """Downloads encoded, hashed and cut into serialised Chunk messages once, keyed by
    (version, round, layer, role, share key, chunk size).

    FedIT sends the same global adapter to every worker: it is encoded, hashed and framed once
    per round (concurrent pulls of a blob wait for the one that builds it); every worker's stream
    then only hands the cached messages to gRPC. The messages kept take at most `max_bytes`; a
    blob past that keeps its digest and a view of its tensors and is framed again per stream
    (one copy per byte, no hash), so the cache never holds a second copy of a large adapter.
    Downloads only ever ask for the newest version (the last closed round), so a newer version
    evicts every older one; `max_entries` bounds the rest.
    """

    def __init__(
        self,
        max_entries: int = 4096,
        wire_dtype: str | None = None,
        digest: DigestName = DEFAULT_DIGEST,
        max_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._max = max_entries
        self._max_bytes = max_bytes
        self._wire_dtype = wire_dtype
        self._digest: DigestName = digest
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, int, int, int, str, int], EncodedDownload] = OrderedDict()
        self._building: dict[tuple[int, int, int, int, str, int], threading.Event] = {}
        self._version = -1
        self._bytes = 0  # of the frames kept

    def get(self, version: int, round: int, item: Download, chunk_size: int) -> EncodedDownload:
        key = (version, round, item.layer, int(item.role), item.share_key, chunk_size)
        while True:
            with self._lock:
                cached = self._entries.get(key)
                if cached is not None:
                    self._entries.move_to_end(key)
                    return cached
                building = self._building.get(key)
                if building is None:
                    self._building[key] = threading.Event()
                    break
            building.wait()  # another stream is encoding this blob; then take it from the cache
        try:
            entry = self._encode(round, item, chunk_size)
            with self._lock:
                if version > self._version:
                    self._version = version
                    for old in [k for k in self._entries if k[0] < version]:
                        self._drop(old)
                if version == self._version:  # an older version is built for its caller, not kept
                    self._entries[key] = entry
                    self._bytes += _kept(entry)
                    while len(self._entries) > self._max:
                        self._drop(next(iter(self._entries)))
        finally:
            with self._lock:
                self._building.pop(key).set()
        return entry

    def _encode(self, round: int, item: Download, chunk_size: int) -> EncodedDownload:
        tensors, wire_meta = codec.to_wire(item.tensors, self._wire_dtype)
        meta = {"round": str(round), "layer": str(item.layer), "role": item.role.name.lower(), **wire_meta}
        layout = codec.layout(tensors, meta)
        key = BlobKey(round, item.layer, item.role)
        digest = framing.digest_layout(layout, self._digest)
        with self._lock:
            keep = self._bytes + layout.size <= self._max_bytes
        if not keep:
            return EncodedDownload(key, chunk_size, digest, layout.size, layout=layout)
        frames = tuple(framing.frames(layout, key, chunk_size, self._digest, push=False, digest=digest))
        return EncodedDownload(key, chunk_size, digest, layout.size, frames=frames)

    def _drop(self, key: tuple[int, int, int, int, str, int]) -> None:
        self._bytes -= _kept(self._entries.pop(key))

    @property
    def nbytes(self) -> int:
        """Bytes of the serialised messages kept."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        return len(self._entries)


def _kept(entry: EncodedDownload) -> int:
    return sum(len(f) for f in entry.frames) if entry.frames is not None else 0


def download_messages(
    cache: BlobCache, version: int, round: int, items: list[Download], chunk_size: int
) -> Iterator[EncodedDownload]:
    """The encoded downloads of `items`, in order (each streamed as its serialised chunks)."""
    for item in items:
        yield cache.get(version, round, item, chunk_size)


class UpdateReceiver:
    """Reassembles and validates one push, layer by layer, as its chunks arrive.

    Nothing is folded into an aggregate here: the engine commits the whole update only after
    every expected layer has arrived intact, so a bad push leaves the round's sums unchanged.
    Each blob is decoded, checked as it travelled (the run's wire dtype) and restored to the
    sender's dtypes by `blobs.decode_blob`; the head blob (HEAD_LAYER, expected as {} in
    `expected`) is checked there by `validate_head`, its width by the engine when it commits.
    """

    def __init__(
        self,
        header: PushHeader,
        expected: Schema,
        max_blob_bytes: int,
        wire_dtype: str | None = None,
        digest: DigestName = DEFAULT_DIGEST,
        pool: BufferPool | None = None,
    ) -> None:
        self.header = header
        self.expected = expected
        self.wire_dtype = wire_dtype
        self.update: LayerTensors = {}
        self.nbytes = 0
        self._assembler = Assembler(max_blob_bytes, digest, pool)

    def feed(self, chunk: ChunkData) -> None:
        done = self._assembler.feed(chunk)
        self.nbytes += len(chunk.data)
        if done is not None:
            self._accept(*done)

    def _accept(self, key: BlobKey, blob: memoryview) -> None:
        head = key.layer == HEAD_LAYER
        where = f"push of worker {self.header.worker_id} round {self.header.round} {'head' if head else f'layer {key.layer}'}"
        if key.round != self.header.round:
            raise InvalidArgument(f"{where}: blob is tagged for round {key.round}")
        if key.role != Role.UPDATE:
            raise InvalidArgument(f"{where}: blob role is {key.role.name.lower()}, expected update")
        if key.layer not in self.expected:
            raise InvalidArgument(f"{where}: layer {key.layer} is not expected in this push (expected {sorted(self.expected)})")
        if key.layer in self.update:
            raise InvalidArgument(f"{where}: layer sent twice")
        expected = None if head else self.expected[key.layer]
        self.update[key.layer] = blobs.decode_blob(blob, where, expected=expected, head=head, wire_dtype=self.wire_dtype)

    def finish(self) -> LayerTensors:
        self._assembler.finish()
        missing = sorted(set(self.expected) - set(self.update))
        if missing == [HEAD_LAYER]:
            raise InvalidArgument(
                f"push of worker {self.header.worker_id} round {self.header.round} is missing the head blob (layer {HEAD_LAYER})"
            )
        if missing:
            raise InvalidArgument(f"push of worker {self.header.worker_id} round {self.header.round} is missing layers {missing}")
        return self.update
