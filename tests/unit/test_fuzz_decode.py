"""Fuzz the decode path (hypothesis, bounded): arbitrary bytes and chunk streams either decode or
raise InvalidArgument — never another exception, never a hang. The decoder makes tensors that
are views of the received buffer, so whatever it accepts must also lie inside that buffer."""

from __future__ import annotations

import json
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


def decode_in_place(blob: bytes) -> dict[str, torch.Tensor] | None:
    """codec.decode over a writable buffer (the zero-copy path a reassembled blob takes); every
    tensor it hands back must be a view inside that buffer or a copy of a misaligned part of it."""
    buffer = bytearray(blob)
    try:
        tensors, _ = codec.decode(memoryview(buffer))
    except InvalidArgument:
        return None
    base = torch.frombuffer(buffer, dtype=torch.uint8).data_ptr() if buffer else 0
    for t in tensors.values():
        nbytes = t.numel() * t.element_size()
        inside = base <= t.data_ptr() and t.data_ptr() + nbytes <= base + len(buffer)
        assert inside or nbytes == 0 or t.data_ptr() % t.element_size() == 0
    return tensors


@FUZZ
@given(st.binary(max_size=512))
def test_decode_random_bytes(blob: bytes) -> None:
    try:
        codec.decode(blob)
    except InvalidArgument:
        pass
    decode_in_place(blob)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 70) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
entries = (
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "F16", "BF16", "U8", "I64", "BOOL", "F8_E4M3", "X"]) | json_values,
            "shape": st.lists(st.integers(-1, 5), max_size=3) | json_values,
            "data_offsets": st.lists(st.integers(-1, 40), min_size=2, max_size=2) | json_values,
        }
    )
    | json_values
)
headers = st.dictionaries(st.text(max_size=4) | st.just("__metadata__"), entries, max_size=4)


@FUZZ
@given(headers, st.integers(0, 48))
def test_decode_structured_headers(header: dict[str, object], data: int) -> None:
    """Headers that look like safetensors (the fields the decoder trusts, with hostile values)."""
    text = json.dumps(header).encode()
    blob = struct.pack("<Q", len(text)) + text + bytes(range(data))
    decode_in_place(blob)


@FUZZ
@given(st.integers(0, len(GOOD) - 1), st.integers(0, 255))
def test_decode_bit_flipped_blob(position: int, value: int) -> None:
    mutated = bytearray(GOOD)
    mutated[position] = value
    tensors = decode_in_place(bytes(mutated))
    if tensors is None:
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
@given(st.lists(chunks, max_size=8), st.sampled_from(["blake3", "sha256"]))
def test_assembler_random_streams(stream: list[ChunkData], algorithm: str) -> None:
    assembler = Assembler(max_blob_bytes=48, algorithm=algorithm)  # type: ignore[arg-type]
    try:
        for chunk in stream:
            done = assembler.feed(chunk)
            if done is not None:  # a digest that matches by chance: what follows must hold too
                try:
                    codec.decode(done[1])
                except InvalidArgument:
                    pass
        assembler.finish()
    except InvalidArgument:
        pass


@FUZZ
@given(st.integers(1, 64), st.integers(0, len(GOOD) - 1), st.integers(1, 255))
def test_reassembled_corrupted_blob_never_reaches_decode(chunk_size: int, position: int, flip: int) -> None:
    pieces = list(split(GOOD, BlobKey(1, 0, Role.UPDATE), chunk_size))
    index, offset = divmod(position, chunk_size)
    data = bytearray(pieces[index].data)
    data[offset] ^= flip
    pieces[index] = ChunkData(pieces[index].key, index, pieces[index].total, pieces[index].digest, len(GOOD), bytes(data))
    assembler = Assembler(max_blob_bytes=1 << 20)
    try:
        for piece in pieces:
            assert assembler.feed(piece) is None  # the last one raises: the digest catches every flip
    except InvalidArgument as exc:
        assert "digest mismatch" in str(exc)
        return
    raise AssertionError("a corrupted blob was accepted")


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
