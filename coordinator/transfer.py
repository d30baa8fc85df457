"""Coordinator side of the wire format: encode downloads once, receive and validate uploads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from common import codec, wire
from common.chunking import Assembler, BlobKey, ChunkData, Role, split
from common.errors import InvalidArgument
from common.schema import HEAD_LAYER, Schema, dtype_name, validate_head, validate_layer
from common.types import PushHeader
from coordinator.strategies import Download
from coordinator.strategies.base import LayerTensors


@dataclass(frozen=True)
class EncodedDownload:
    """One download blob, ready to stream: its serialised Chunk messages and payload size."""

    messages: tuple[bytes, ...]
    nbytes: int


class BlobCache:
    """Downloads encoded, hashed and cut into serialised Chunk messages once, keyed by
    (version, round, layer, role, share key, chunk size).

    FedIT sends the same global adapter to every worker: it is encoded, hashed and framed once
    per round; every worker's stream then only hands the cached messages to gRPC. Downloads only
    ever ask for the newest version (the last closed round), so a newer version evicts every
    older one; `max_entries` bounds the rest.
    """

    def __init__(self, max_entries: int = 4096, wire_dtype: str | None = None) -> None:
        self._max = max_entries
        self._wire_dtype = wire_dtype
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, int, int, int, str, int], EncodedDownload] = OrderedDict()
        self._version = -1

    def get(self, version: int, round: int, item: Download, chunk_size: int) -> EncodedDownload:
        key = (version, round, item.layer, int(item.role), item.share_key, chunk_size)
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                return cached
        tensors, wire_meta = codec.to_wire(item.tensors, self._wire_dtype)
        meta = {"round": str(round), "layer": str(item.layer), "role": item.role.name.lower(), **wire_meta}
        blob = codec.encode(tensors, meta)
        chunks = split(blob, BlobKey(round, item.layer, item.role), chunk_size)
        entry = EncodedDownload(tuple(wire.encode_chunk(c) for c in chunks), len(blob))
        with self._lock:
            if version > self._version:
                self._version = version
                for old in [k for k in self._entries if k[0] < version]:
                    del self._entries[old]
            self._entries[key] = entry
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return entry

    def __len__(self) -> int:
        return len(self._entries)


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
    The head blob (HEAD_LAYER, expected as {} in `expected`) is checked by `validate_head`: rows
    float32 (or the run's wire dtype), 1-D, finite, of one length, named; the engine checks that
    length against the run's head width when it commits.
    """

    def __init__(self, header: PushHeader, expected: Schema, max_blob_bytes: int, wire_dtype: str | None = None) -> None:
        self.header = header
        self.expected = expected
        # With a wire dtype, float32 tensors must arrive in it; they are restored to float32 after validation.
        self._on_wire = _as_sent(expected, wire_dtype)
        self._head_dtype = dtype_name(codec.WIRE_DTYPES[wire_dtype]) if wire_dtype else "float32"
        self.update: LayerTensors = {}
        self.nbytes = 0
        self._assembler = Assembler(max_blob_bytes)

    def feed(self, chunk: ChunkData) -> None:
        done = self._assembler.feed(chunk)
        self.nbytes += len(chunk.data)
        if done is not None:
            self._accept(*done)

    def _accept(self, key: BlobKey, blob: bytes) -> None:
        part = "head" if key.layer == HEAD_LAYER else f"layer {key.layer}"
        where = f"push of worker {self.header.worker_id} round {self.header.round} {part}"
        if key.round != self.header.round:
            raise InvalidArgument(f"{where}: blob is tagged for round {key.round}")
        if key.role != Role.UPDATE:
            raise InvalidArgument(f"{where}: blob role is {key.role.name.lower()}, expected update")
        if key.layer not in self.expected:
            raise InvalidArgument(f"{where}: layer {key.layer} is not expected in this push (expected {sorted(self.expected)})")
        if key.layer in self.update:
            raise InvalidArgument(f"{where}: layer sent twice")
        tensors, _ = codec.decode(blob)
        if key.layer == HEAD_LAYER:
            validate_head(tensors, where, dtype=self._head_dtype)
            self.update[key.layer] = {name: t.to(torch.float32) for name, t in tensors.items()}
            return
        validate_layer(tensors, self._on_wire[key.layer], where)
        if self._on_wire is not self.expected:
            tensors = {
                name: t.to(torch.float32) if self.expected[key.layer][name].dtype == "float32" else t
                for name, t in tensors.items()
            }
        self.update[key.layer] = tensors

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


def _as_sent(expected: Schema, wire_dtype: str | None) -> Schema:
    """The schema as a push travels: float32 tensors in the wire dtype (the schema itself when off)."""
    if wire_dtype is None:
        return expected
    name = dtype_name(codec.WIRE_DTYPES[wire_dtype])
    return {
        layer: {n: replace(spec, dtype=name) if spec.dtype == "float32" else spec for n, spec in specs.items()}
        for layer, specs in expected.items()
    }
