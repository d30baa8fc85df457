"""common.blobs.decode_blob: the one decode-and-validate step of pushed and pulled blobs."""

from __future__ import annotations

import pytest
import torch

from common import blobs, codec
from common.errors import InvalidArgument
from common.schema import TensorSpec, schema_of

A, B = "q.lora_A.weight", "q.lora_B.weight"


def layer(value: float = 0.25, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {A: torch.full((2, 4), value, dtype=dtype), B: torch.linspace(-1, 1, 8, dtype=dtype).reshape(4, 2)}


EXPECTED = schema_of({0: layer()})[0]


def sent(tensors: dict[str, torch.Tensor], wire: str | None = None, meta: dict[str, str] | None = None) -> bytes:
    """The blob a client sends (codec.to_wire + its metadata), or with `meta` instead."""
    cast, wire_meta = codec.to_wire(tensors, wire)
    return codec.encode(cast, wire_meta if meta is None else meta)


# -- what is accepted ---------------------------------------------------------------------------


def test_a_float32_layer_without_wire_dtype_comes_back_as_sent() -> None:
    got = blobs.decode_blob(sent(layer()), "w", expected=EXPECTED)
    assert {n: t.tolist() for n, t in got.items()} == {n: t.tolist() for n, t in layer().items()}


@pytest.mark.parametrize(("wire", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_the_wire_dtype_is_checked_as_sent_and_restored_to_float32(wire: str, dtype: torch.dtype) -> None:
    got = blobs.decode_blob(sent(layer(0.1), wire), "w", expected=EXPECTED, wire_dtype=wire)
    for name, t in layer(0.1).items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], t.to(dtype).float())


def test_a_native_low_precision_layer_travels_as_it_is_under_a_wire_dtype() -> None:
    native = layer(dtype=torch.bfloat16)
    got = blobs.decode_blob(sent(native, "bf16"), "w", expected=schema_of({0: native})[0], wire_dtype="bf16")
    assert all(t.dtype == torch.bfloat16 for t in got.values())  # nothing to restore: it was never cast


def test_as_sent_mirrors_to_wire() -> None:
    mixed = {A: TensorSpec(A, (2, 4), "float32"), B: TensorSpec(B, (4, 2), "bfloat16")}
    assert blobs.as_sent(mixed, "bf16") == mixed  # a layer already holding the wire dtype is sent as is
    assert blobs.as_sent(EXPECTED, None) == EXPECTED
    assert {s.dtype for s in blobs.as_sent(EXPECTED, "fp16").values()} == {"float16"}


def test_a_pull_is_decoded_and_restored_without_specs() -> None:
    got = blobs.decode_blob(sent(layer(0.1), "bf16"), "pulled layer 0 cluster")
    assert all(t.dtype == torch.float32 for t in got.values())
    assert torch.equal(got[A], layer(0.1)[A].to(torch.bfloat16).float())


def test_head_rows_are_checked_and_restored() -> None:
    rows = {"t/a": torch.tensor([1.0, 2.0, 0.5]), "t/b": torch.tensor([0.0, -1.0, 3.0])}
    got = blobs.decode_blob(sent(rows, "bf16"), "head", head=True, wire_dtype="bf16")
    assert all(t.dtype == torch.float32 for t in got.values()) and got["t/a"].tolist() == [1.0, 2.0, 0.5]
    assert blobs.decode_blob(sent(rows), "head", head=True)["t/b"].tolist() == [0.0, -1.0, 3.0]


# -- what is rejected: case table ---------------------------------------------------------------

NAN_B = {**layer(), B: torch.full((4, 2), float("nan"))}

# case -> (blob, wire dtype of the run, words of the error)
REJECTS: dict[str, tuple[bytes, str | None, str]] = {
    "not safetensors": (b"definitely not a safetensors blob", None, "safetensors"),
    "truncated": (sent(layer())[:-3], None, "safetensors"),
    "wrong dtype": (sent(layer(dtype=torch.float16)), None, "tensor q.lora_A.weight has dtype float16, expected float32"),
    "wrong shape": (sent({**layer(), A: torch.ones(2, 5)}), None, "has shape (2, 5), expected (2, 4)"),
    "NaN": (sent(NAN_B), None, "tensor q.lora_B.weight contains NaN or Inf"),
    "NaN on the wire": (sent(NAN_B, "bf16"), "bf16", "contains NaN or Inf"),
    "unexpected name": (sent({**layer(), "x.lora_A.weight": torch.ones(1)}), None, "unexpected tensor names"),
    "missing name": (sent({A: layer()[A]}), None, "missing tensors ['q.lora_B.weight']"),
    "float32 when the wire dtype is due": (sent(layer()), "bf16", "dtype float32, expected bfloat16"),
    "wire dtype not announced": (sent(layer(), "bf16", meta={}), "bf16", "announces wire dtype none, expected bf16"),
    "another wire dtype announced": (
        codec.encode(codec.to_wire(layer(), "bf16")[0], {codec.WIRE_META_KEY: "fp16"}),
        "bf16",
        "announces wire dtype fp16, expected bf16",
    ),
    "wire dtype announced when off": (
        codec.encode(layer(), {codec.WIRE_META_KEY: "bf16"}),
        None,
        "announces wire dtype bf16, expected none",
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTS))
def test_bad_blobs_are_invalid_argument_naming_where(case: str) -> None:
    blob, wire, words = REJECTS[case]
    with pytest.raises(InvalidArgument, match="^push of w round 1 layer 0: ") as info:
        blobs.decode_blob(blob, "push of w round 1 layer 0", expected=EXPECTED, wire_dtype=wire)
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("rows", "wire", "words"),
    [
        ({"t/a": torch.tensor([1.0, float("nan")])}, None, "head row 't/a' contains NaN"),
        ({"t/a": torch.tensor([1.0, 2.0])}, "bf16", "head row 't/a' has dtype float32, expected bfloat16"),
        ({"t/a": torch.ones(2, 2)}, None, "expected 1-D"),
    ],
)
def test_bad_head_blobs_are_invalid_argument(rows: dict[str, torch.Tensor], wire: str | None, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        blobs.decode_blob(codec.encode(rows), "head", head=True, wire_dtype=wire)


def test_a_pull_with_an_unknown_wire_dtype_is_invalid_argument() -> None:
    blob = codec.encode(layer(), {codec.WIRE_META_KEY: "fp8"})
    with pytest.raises(InvalidArgument, match="^pulled layer 0 cluster: unknown wire dtype 'fp8'"):
        blobs.decode_blob(blob, "pulled layer 0 cluster")
