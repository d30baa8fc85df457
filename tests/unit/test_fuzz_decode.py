"""Fuzz the decode path (hypothesis, bounded): arbitrary bytes and chunk streams either decode or
raise InvalidArgument — never another exception, never a hang."""

from __future__ import annotations

import struct

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import codec
from common.chunking import Assembler, BlobKey, ChunkData, Role, split
from common.errors import InvalidArgument
from common.schema import TensorSpec, validate_layer

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD = codec.encode({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, {"round": "1"})


@FUZZ
@given(st.binary(max_size=512))
def test_decode_random_bytes(blob: bytes) -> None:
    try:
        codec.decode(blob)
    except InvalidArgument:
        pass


@FUZZ
@given(st.integers(0, len(GOOD) - 1), st.integers(0, 255))
def test_decode_bit_flipped_blob(position: int, value: int) -> None:
    mutated = bytearray(GOOD)
    mutated[position] = value
    try:
        tensors, _ = codec.decode(bytes(mutated))
    except InvalidArgument:
        return
    # whatever still decodes must pass or fail validation cleanly
    try:
        validate_layer(tensors, {"w": TensorSpec("w", (3, 4), "float32")}, "fuzz")
    except InvalidArgument:
        pass


@FUZZ
@given(st.binary(max_size=256))
def test_decode_random_header(header: bytes) -> None:
    try:
        codec.decode(struct.pack("<Q", len(header)) + header)
    except InvalidArgument:
        pass


chunks = st.builds(
    ChunkData,
    key=st.builds(BlobKey, st.integers(0, 3), st.integers(0, 3), st.sampled_from(list(Role))),
    index=st.integers(0, 4),
    total=st.integers(0, 5),
    digest=st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40)),
    blob_size=st.integers(0, 64),
    data=st.binary(max_size=40),
)


@FUZZ
@given(st.lists(chunks, max_size=8))
def test_assembler_random_streams(stream: list[ChunkData]) -> None:
    assembler = Assembler(max_blob_bytes=48)
    try:
        for chunk in stream:
            assembler.feed(chunk)
        assembler.finish()
    except InvalidArgument:
        pass


@FUZZ
@given(st.permutations(list(range(4))))
def test_assembler_any_reordering_is_rejected_or_identical(order: list[int]) -> None:
    pieces = list(split(GOOD, BlobKey(1, 0, Role.UPDATE), chunk_size=len(GOOD) // 4 + 1))
    assert len(pieces) == 4
    assembler = Assembler(max_blob_bytes=1 << 20)
    try:
        out = [assembler.feed(pieces[i]) for i in order]
    except InvalidArgument:
        assert order != [0, 1, 2, 3]
        return
    assert order == [0, 1, 2, 3] and out[-1] == (BlobKey(1, 0, Role.UPDATE), GOOD)
