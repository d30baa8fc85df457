"""common.wire writes and reads exactly the protobuf wire format of Chunk / PushUpdateRequest."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import serde, wire
from common.chunking import BlobKey, ChunkData, Role
from common.errors import InvalidArgument
from common.types import PushHeader
from proto.fedtree.v1 import federation_pb2 as pb

chunks = st.builds(
    ChunkData,
    key=st.builds(BlobKey, st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 32) - 1), st.sampled_from(list(Role))),
    index=st.integers(0, (1 << 32) - 1),
    total=st.integers(0, (1 << 32) - 1),
    digest=st.binary(max_size=40),
    blob_size=st.integers(0, (1 << 64) - 1),
    data=st.binary(max_size=300),
)


@settings(max_examples=200, deadline=None)
@given(chunks)
def test_encode_push_chunk_is_byte_identical_to_protobuf(chunk: ChunkData) -> None:
    expected = pb.PushUpdateRequest(chunk=serde.chunk_to_proto(chunk)).SerializeToString()
    assert wire.encode_push_chunk(chunk) == expected


@settings(max_examples=200, deadline=None)
@given(chunks)
def test_decode_chunk_reads_what_protobuf_wrote(chunk: ChunkData) -> None:
    got = wire.decode_chunk(serde.chunk_to_proto(chunk).SerializeToString())
    assert (got.key, got.index, got.total, got.digest, got.blob_size, bytes(got.data)) == (
        chunk.key,
        chunk.index,
        chunk.total,
        chunk.digest,
        chunk.blob_size,
        chunk.data,
    )


def test_decode_chunk_payload_is_a_view_not_a_copy() -> None:
    chunk = ChunkData(BlobKey(1, 2, Role.CLUSTER), 0, 1, b"d" * 32, 5, b"hello")
    assert isinstance(wire.decode_chunk(serde.chunk_to_proto(chunk).SerializeToString()).data, memoryview)


def test_non_canonical_layouts_fall_back_to_protobuf() -> None:
    a = pb.Chunk(round=7, layer=1, role=pb.ROLE_UPDATE, index=0, total=1, data=b"xy").SerializeToString()
    b = pb.Chunk(round=9).SerializeToString()  # a repeated scalar field: the last value wins in protobuf
    c = pb.Chunk(layer=3).SerializeToString() + a  # field 2 before field 1: out of order
    for msg in (a + b, c):
        want = pb.Chunk.FromString(msg)
        got = wire.decode_chunk(msg)
        assert (got.key.round, got.key.layer, bytes(got.data)) == (want.round, want.layer, want.data)


@pytest.mark.parametrize("blob", [b"\xff", b"\x42\x05ab", b"\x08\x80\x80"])
def test_malformed_bytes_raise_invalid_argument(blob: bytes) -> None:
    with pytest.raises(InvalidArgument):
        wire.decode_chunk(blob)


@pytest.mark.parametrize("role", [0, 9])
def test_unknown_role_is_invalid_argument(role: int) -> None:
    with pytest.raises(InvalidArgument, match="unknown role"):
        wire.decode_chunk(pb.Chunk(round=1, role=role, data=b"x").SerializeToString())  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(chunks)
def test_encode_chunk_is_byte_identical_to_protobuf(chunk: ChunkData) -> None:
    assert wire.encode_chunk(chunk) == serde.chunk_to_proto(chunk).SerializeToString()


@settings(max_examples=100, deadline=None)
@given(chunks)
def test_decode_push_request_reads_a_chunk(chunk: ChunkData) -> None:
    part = wire.decode_push_request(wire.encode_push_chunk(chunk))
    assert part.header is None and part.problem is None and part.chunk is not None
    assert (part.chunk.key, part.chunk.index, part.chunk.digest, bytes(part.chunk.data)) == (
        chunk.key,
        chunk.index,
        chunk.digest,
        chunk.data,
    )


def test_decode_push_request_reads_a_header_and_never_raises() -> None:
    header = PushHeader("w", 3, "u", 5, {"loss": 0.5})
    part = wire.decode_push_request(serde.push_header_to_proto(header).SerializeToString())
    assert part.chunk is None and part.problem is None and part.header == header  # a domain header, not protobuf
    bad_role = pb.PushUpdateRequest(chunk=pb.Chunk(round=1, role=42, data=b"x")).SerializeToString()  # type: ignore[arg-type]
    assert wire.decode_push_request(bad_role).problem == "unknown role value 42"
    assert "malformed" in (wire.decode_push_request(b"\x12\x05ab").problem or "")
    assert wire.decode_push_request(b"").problem == "empty push message"
    # a chunk field repeated: protobuf merges the two, so the hand reader must hand over to it
    twice = pb.PushUpdateRequest(chunk=pb.Chunk(round=1, role=3, data=b"a")).SerializeToString() * 2
    merged = pb.PushUpdateRequest.FromString(twice).chunk
    part = wire.decode_push_request(twice)
    assert part.chunk is not None and bytes(part.chunk.data) == merged.data and part.chunk.key.round == merged.round
