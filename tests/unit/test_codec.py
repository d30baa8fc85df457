"""Unit tests for common.codec: the safetensors wire format of one adapter blob."""

from __future__ import annotations

import hashlib
import json
import math
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from common import codec
from common.errors import InvalidArgument

# codec.encode({"b": f32 [[1.0, 2.0]], "a": f16 [3]}, {"round": "1"}), computed once with safetensors 0.8.0.
# safetensors orders tensors by dtype alignment (F32 before F16) then name, pads the JSON header
# with spaces to a multiple of 8 bytes, and stores little-endian data.
GOLDEN = (
    b"\x90\x00\x00\x00\x00\x00\x00\x00"
    b'{"__metadata__":{"round":"1"},'
    b'"b":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},'
    b'"a":{"dtype":"F16","shape":[1],"data_offsets":[8,10]}}'
    b"     "
    b"\x00\x00\x80?\x00\x00\x00@"
    b"\x00B"
)
GOLDEN_SHA256 = "f0f723367c70ff5344a305f3238c8cd36eb7ffc59dd6a090783e98ebe08649ec"


def golden_tensors() -> dict[str, torch.Tensor]:
    return {"b": torch.tensor([[1.0, 2.0]], dtype=torch.float32), "a": torch.tensor([3], dtype=torch.float16)}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit pattern of a float tensor, so NaN payloads and -0.0 compare exactly."""
    return t.view({torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype])


def with_header(header: bytes, tail: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + tail


# -- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_preserves_dtype_bits_and_metadata(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(3, 5, generator=gen).to(dtype)
    a[0, 0] = -0.0
    a[0, 1] = float("nan")
    b = torch.randn(7, generator=gen).to(dtype)
    meta = {"round": "4", "layer": "2", "role": "update"}

    tensors, got_meta = codec.decode(codec.encode({"x.lora_A.weight": a, "x.lora_B.weight": b}, meta))

    assert sorted(tensors) == ["x.lora_A.weight", "x.lora_B.weight"]
    for name, original in (("x.lora_A.weight", a), ("x.lora_B.weight", b)):
        assert tensors[name].dtype == dtype
        assert tuple(tensors[name].shape) == tuple(original.shape)
        assert torch.equal(bits(tensors[name]), bits(original))
    assert got_meta == meta


def test_round_trip_without_metadata_gives_empty_dict() -> None:
    tensors, meta = codec.decode(codec.encode({"t": torch.tensor([1.5, -2.5])}))
    assert meta == {}
    assert torch.equal(tensors["t"], torch.tensor([1.5, -2.5]))


def test_encode_makes_non_contiguous_tensors_contiguous() -> None:
    base = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    transposed = base.t()
    assert not transposed.is_contiguous()
    tensors, _ = codec.decode(codec.encode({"t": transposed}))
    assert tensors["t"].tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]


def test_encode_detaches_tensors_that_require_grad() -> None:
    p = torch.ones(2, requires_grad=True)
    tensors, _ = codec.decode(codec.encode({"p": p * 2}))
    assert tensors["p"].tolist() == [2.0, 2.0]
    assert not tensors["p"].requires_grad


# -- golden bytes: the wire format --------------------------------------------------------------


def test_golden_bytes() -> None:
    blob = codec.encode(golden_tensors(), {"round": "1"})
    assert blob == GOLDEN
    assert len(blob) == 162
    assert hashlib.sha256(blob).hexdigest() == GOLDEN_SHA256
    assert codec.sha256(blob) == bytes.fromhex(GOLDEN_SHA256)


def test_golden_bytes_decode() -> None:
    tensors, meta = codec.decode(GOLDEN)
    assert meta == {"round": "1"}
    assert tensors["b"].dtype == torch.float32 and tensors["b"].tolist() == [[1.0, 2.0]]
    assert tensors["a"].dtype == torch.float16 and tensors["a"].tolist() == [3.0]


def test_encode_is_independent_of_insertion_order() -> None:
    reordered = dict(reversed(list(golden_tensors().items())))
    assert codec.encode(reordered, {"round": "1"}) == GOLDEN


def test_read_header_of_golden_blob() -> None:
    header = codec.read_header(GOLDEN)
    assert header == {
        "__metadata__": {"round": "1"},
        "b": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]},
        "a": {"dtype": "F16", "shape": [1], "data_offsets": [8, 10]},
    }
    assert codec.read_header(memoryview(GOLDEN)) == header


def test_sha256_is_32_bytes() -> None:
    assert codec.sha256(b"") == hashlib.sha256(b"").digest()
    assert len(codec.sha256(b"abc")) == 32


# -- malformed blobs ----------------------------------------------------------------------------


def test_decode_garbage_raises_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="does not fit"):
        codec.decode(b"this is certainly not a safetensors blob")


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x00" * 7])
def test_decode_shorter_than_length_prefix(blob: bytes) -> None:
    with pytest.raises(InvalidArgument, match="too short"):
        codec.decode(blob)


@pytest.mark.parametrize("cut", [1, 2, 5, 10])  # the data section is the last 10 bytes
def test_decode_truncated_blob(cut: int) -> None:
    with pytest.raises(InvalidArgument, match="not a valid safetensors blob"):
        codec.decode(GOLDEN[:-cut])


def test_decode_truncated_inside_header() -> None:
    with pytest.raises(InvalidArgument, match="does not fit"):
        codec.decode(GOLDEN[:40])


def test_decode_header_length_larger_than_blob() -> None:
    with pytest.raises(InvalidArgument, match="header length 1099511627776 does not fit a 10-byte blob"):
        codec.decode(struct.pack("<Q", 1 << 40) + b"{}")


def test_decode_header_length_over_max_header_bytes() -> None:
    header = b"{}" + b" " * codec.MAX_HEADER_BYTES  # fits the blob but exceeds the 1 MiB cap
    with pytest.raises(InvalidArgument, match=f"header length {codec.MAX_HEADER_BYTES + 2} does not fit"):
        codec.decode(with_header(header))


@pytest.mark.parametrize("header", [b"not json at all", b'{"a": ', b"\xff\xfe\xfd"])
def test_decode_non_json_header(header: bytes) -> None:
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        codec.decode(with_header(header))


@pytest.mark.parametrize("header", [b"[1, 2, 3]", b'"text"', b"42", b"null"])
def test_decode_header_that_is_not_an_object(header: bytes) -> None:
    with pytest.raises(InvalidArgument, match="not a JSON object"):
        codec.decode(with_header(header))


def test_decode_metadata_that_is_not_an_object() -> None:
    with pytest.raises(InvalidArgument, match="__metadata__ is not a JSON object"):
        codec.decode(with_header(json.dumps({"__metadata__": ["round", "1"]}).encode()))


def test_decode_data_offsets_past_end() -> None:
    header = json.dumps({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    with pytest.raises(InvalidArgument, match="not a valid safetensors blob"):
        codec.decode(with_header(header, b"\x00" * 8))


def test_decode_unknown_dtype() -> None:
    header = json.dumps({"t": {"dtype": "XYZ", "shape": [1], "data_offsets": [0, 4]}}).encode()
    with pytest.raises(InvalidArgument):
        codec.decode(with_header(header, b"\x00" * 4))


def test_decode_deeply_nested_header_is_invalid_argument() -> None:
    header = b"[" * 100_000 + b"]" * 100_000  # 200 kB, under the 1 MiB header cap
    with pytest.raises(InvalidArgument):
        codec.decode(with_header(header))


# -- our writer is safetensors' format; our reader is zero-copy and as strict as safetensors ----

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16, torch.int8]
DTYPES += [torch.uint8, torch.bool, torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2]


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 256, (math.prod(shape) * dtype.itemsize,), dtype=torch.uint8, generator=gen).view(dtype).reshape(shape)
    )


named_tensors = st.dictionaries(
    st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(lambda n: n != codec.METADATA_KEY),
    st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 5), max_size=3).map(tuple), st.integers(0, 99)),
    max_size=6,
).map(lambda d: {name: random_tensor(dtype, shape, seed) for name, (dtype, shape, seed) in d.items()})
one_key_metadata = st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.text(max_size=8), min_size=1, max_size=1))


@settings(max_examples=150, deadline=None)
@given(named_tensors, one_key_metadata)
def test_encode_is_byte_identical_to_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    # safetensors writes several metadata keys in hash order (not reproducible); with at most one key it is
    assert codec.encode(tensors, metadata) == st_save(tensors, metadata=metadata)


@settings(max_examples=150, deadline=None)
@given(named_tensors, st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4))
def test_decode_reads_what_safetensors_wrote_and_safetensors_reads_ours(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    ours, meta = codec.decode(st_save(tensors, metadata=metadata or None))
    theirs = st_load(codec.encode(tensors, metadata))
    assert meta == metadata and sorted(ours) == sorted(theirs) == sorted(tensors)
    for name, t in tensors.items():
        for got in (ours[name], theirs[name]):
            assert got.dtype == t.dtype and got.shape == t.shape
            assert torch.equal(got.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))  # bit for bit


def test_metadata_keys_are_written_sorted() -> None:
    blob = codec.encode({"t": torch.zeros(1)}, {"round": "1", "layer": "2", "role": "update"})
    assert codec.read_header(blob)["__metadata__"] == {"layer": "2", "role": "update", "round": "1"}
    assert b'{"__metadata__":{"layer":"2","role":"update","round":"1"},' in blob


def test_decode_of_a_writable_buffer_shares_its_memory() -> None:
    buffer = bytearray(codec.encode(golden_tensors(), {"round": "1"}))
    tensors, _ = codec.decode(memoryview(buffer))
    base = torch.frombuffer(buffer, dtype=torch.uint8).data_ptr()
    for t in tensors.values():
        assert base <= t.data_ptr() < base + len(buffer)  # a view, not a copy
    buffer[-2:] = torch.tensor([5.0], dtype=torch.float16).view(torch.uint8).numpy().tobytes()
    assert tensors["a"].tolist() == [5.0]


def test_decode_of_read_only_bytes_copies_once() -> None:
    tensors, _ = codec.decode(GOLDEN)
    tensors["b"].add_(1.0)  # never writes into the immutable bytes
    assert codec.decode(GOLDEN)[0]["b"].tolist() == [[1.0, 2.0]]


def test_decode_accepts_a_uint8_tensor() -> None:
    buffer = torch.frombuffer(bytearray(GOLDEN), dtype=torch.uint8)
    tensors, meta = codec.decode(buffer)
    assert meta == {"round": "1"} and tensors["b"].untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


def test_misaligned_tensor_is_copied_not_refused() -> None:
    # a valid safetensors blob whose F32 tensor starts at an odd offset (our writer never makes one)
    header = json.dumps(
        {"u": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "f": {"dtype": "F32", "shape": [1], "data_offsets": [1, 5]}}
    )
    text = header.encode() + b" " * (-len(header) % 8)
    blob = with_header(text, b"\x07" + struct.pack("<f", 1.5))
    tensors, _ = codec.decode(bytearray(blob))
    assert tensors["u"].tolist() == [7] and tensors["f"].tolist() == [1.5]


@pytest.mark.parametrize(
    ("entries", "data", "words"),
    [
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, 4, "does not take 4 bytes"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "does not start where the previous ends"),
        (
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            },
            4,
            "does not start where",
        ),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 6, "the tensors take 4 bytes, the blob holds 6"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, 4, "data_offsets"),
        ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4, "shape"),
        ({"t": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, 4, "shape"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}, 4, "data_offsets"),
        ({"t": [1, 2]}, 4, "exactly dtype, shape and data_offsets"),
        ({"__metadata__": {"round": 1}}, 0, "values must be strings"),
    ],
)
def test_decode_is_as_strict_as_safetensors(entries: dict[str, object], data: int, words: str) -> None:
    blob = with_header(json.dumps(entries).encode(), b"\x00" * data)
    with pytest.raises(InvalidArgument, match=words):
        codec.decode(blob)
    with pytest.raises(SafetensorError):
        st_load(blob)  # safetensors refuses each of them too


def test_decode_refuses_unknown_entry_keys_which_safetensors_ignores() -> None:
    entries = {"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}
    with pytest.raises(InvalidArgument, match="exactly dtype, shape and data_offsets"):
        codec.decode(with_header(json.dumps(entries).encode(), b"\x00" * 4))  # our writer never adds any


def test_encode_refuses_a_dtype_safetensors_cannot_store() -> None:
    with pytest.raises(ValueError, match="cannot be stored"):
        codec.layout({"c": torch.zeros(2, dtype=torch.complex64)})


def test_layout_pieces_are_views_of_the_tensors() -> None:
    t = torch.arange(6, dtype=torch.float32)
    lay = codec.layout({"t": t})
    assert lay.size == len(lay.head) + 24 and len(lay.data) == 1
    t[0] = 9.0  # the layout holds the tensor's memory, not a copy of it
    assert struct.unpack_from("<f", lay.data[0], 0) == (9.0,)
