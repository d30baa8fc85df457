"""Chunk messages written and read by hand: the bytes protobuf would produce, fewer copies.

A chunk's payload is most of every transfer. Through the generated classes it is copied four
times on the way out (slice -> Chunk -> PushUpdateRequest -> serialised bytes) and twice on the
way in (parse -> `.data`). `encode_push_chunk` writes the serialised PushUpdateRequest{chunk}
with one copy of the payload; `decode_chunk` reads a serialised Chunk whose payload stays a view
of the received bytes. Both are byte-for-byte the protobuf wire format of
proto/fedtree/v1/federation.proto (tested against the generated code), so either side may use
the generated classes instead. `decode_chunk` handles the canonical layout (fields in number
order, as every protobuf serialiser writes them) and hands anything else to the generated parser,
so it never accepts a message that protobuf would read differently.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from common import serde
from common.chunking import BlobKey, ChunkData, Role
from common.errors import InvalidArgument
from common.types import PushHeader
from proto.fedtree.v1 import federation_pb2 as pb

_VARINT, _LEN = 0, 2
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _chunk_head(key: BlobKey, index: int, total: int, digest: bytes, blob_size: int, data_len: int) -> bytes:
    """Every field of a Chunk but the payload's bytes; proto3 leaves out fields equal to zero."""
    parts = []
    for field, value in ((1, key.round), (2, key.layer), (3, int(key.role)), (4, index), (5, total)):
        if value:
            parts += [_tag(field, _VARINT), _varint(value)]
    if digest:
        parts += [_tag(6, _LEN), _varint(len(digest)), digest]
    if blob_size:
        parts += [_tag(7, _VARINT), _varint(blob_size)]
    if data_len:
        parts += [_tag(8, _LEN), _varint(data_len)]
    return b"".join(parts)


def chunk_prefix(key: BlobKey, index: int, total: int, digest: bytes, blob_size: int, data_len: int, push: bool) -> bytes:
    """The bytes of a serialised Chunk (`push`: of a PushUpdateRequest{chunk}) that come before
    its payload, whose `data_len` bytes follow them directly."""
    head = _chunk_head(key, index, total, digest, blob_size, data_len)
    if not push:
        return head
    return b"".join((_tag(2, _LEN), _varint(len(head) + data_len), head))


def encode_chunk(chunk: ChunkData) -> bytes:
    """The serialised Chunk (a PullAdapters response): one copy of the payload."""
    prefix = chunk_prefix(chunk.key, chunk.index, chunk.total, chunk.digest, chunk.blob_size, len(chunk.data), push=False)
    return b"".join((prefix, chunk.data))


def encode_push_chunk(chunk: ChunkData) -> bytes:
    """The serialised PushUpdateRequest{chunk: ...}: one copy of the payload."""
    prefix = chunk_prefix(chunk.key, chunk.index, chunk.total, chunk.digest, chunk.blob_size, len(chunk.data), push=True)
    return b"".join((prefix, chunk.data))


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fast_decode(data: bytes | memoryview) -> ChunkData | None:
    """The chunk, if `data` has the canonical layout with in-range values; else None."""
    buf = memoryview(data)
    values = [0, 0, 0, 0, 0, 0, 0]  # fields 1..5 and 7 (varints); 6 is the digest
    digest = b""
    payload: memoryview = buf[0:0]
    pos, last = 0, 0
    try:
        while pos < len(buf):
            key, pos = _read_varint(buf, pos)
            field, wire_type = key >> 3, key & 7
            if field <= last or field > 8:
                return None  # out of order, repeated or unknown: let protobuf decide
            last = field
            if field in (6, 8):
                if wire_type != _LEN:
                    return None
                length, pos = _read_varint(buf, pos)
                if pos + length > len(buf):
                    return None
                if field == 6:
                    digest = bytes(buf[pos : pos + length])
                else:
                    payload = buf[pos : pos + length]
                pos += length
            else:
                if wire_type != _VARINT:
                    return None
                value, pos = _read_varint(buf, pos)
                if value > (_U64 if field == 7 else _U32):
                    return None
                values[field - 1] = value
    except ValueError:
        return None
    round_, layer, role, index, total, _, blob_size = values
    try:
        role_ = Role(role)
    except ValueError:
        raise InvalidArgument(f"unknown role value {role}") from None
    return ChunkData(BlobKey(round_, layer, role_), index, total, digest, blob_size, payload)


def decode_chunk(data: bytes | memoryview) -> ChunkData:
    """A serialised Chunk as ChunkData; the payload is a view of `data` (no copy)."""
    fast = _fast_decode(data)
    if fast is not None:
        return fast
    try:
        msg = pb.Chunk.FromString(bytes(data))
    except DecodeError as exc:
        raise InvalidArgument(f"malformed chunk message: {exc}") from None
    try:
        role = Role(msg.role)
    except ValueError:
        raise InvalidArgument(f"unknown role value {msg.role}") from None
    return ChunkData(BlobKey(msg.round, msg.layer, role), msg.index, msg.total, msg.digest, msg.blob_size, msg.data)


@dataclass(frozen=True)
class PushPart:
    """One message of a PushUpdate stream, decoded to domain types: a header, a chunk, or why it
    is neither (the servicer never sees the protobuf message)."""

    header: PushHeader | None = None
    chunk: ChunkData | None = None
    problem: str | None = None


def decode_push_request(data: bytes) -> PushPart:
    """A serialised PushUpdateRequest; never raises (a gRPC deserializer must not): a message
    that cannot be read comes back with `problem` set for the servicer to reject."""
    buf = memoryview(data)
    try:
        if len(buf) >= 2 and buf[0] == (2 << 3 | _LEN):  # canonical: exactly one chunk field
            length, pos = _read_varint(buf, 1)
            if pos + length == len(buf):
                fast = _fast_decode(buf[pos:])
                if fast is not None:
                    return PushPart(chunk=fast)
        msg = pb.PushUpdateRequest.FromString(data)
        which = msg.WhichOneof("payload")
        if which == "header":
            return PushPart(header=serde.push_header_from_proto(msg.header))
        if which == "chunk":
            return PushPart(chunk=decode_chunk(msg.chunk.SerializeToString()))
        return PushPart(problem="empty push message")
    except InvalidArgument as exc:
        return PushPart(problem=str(exc))
    except (ValueError, DecodeError) as exc:
        return PushPart(problem=f"malformed push message: {exc}")
