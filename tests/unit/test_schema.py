"""Unit tests for common.schema: expected adapter tensors and validation of received ones."""

from __future__ import annotations

import pytest
import torch

from common.errors import InvalidArgument
from common.schema import (
    DTYPES,
    TensorSpec,
    UploadSpec,
    all_finite,
    dtype_name,
    is_lora_a,
    is_lora_b,
    schema_of,
    select,
    validate_layer,
)

A = "q.lora_A.weight"
B = "q.lora_B.weight"
VA = "v.lora_A.weight"
WHERE = "push of worker w1 round 2 layer 0"

EXPECTED = {
    A: TensorSpec(A, (2, 4), "float32"),
    B: TensorSpec(B, (4, 2), "float32"),
}


def good() -> dict[str, torch.Tensor]:
    return {A: torch.zeros(2, 4), B: torch.ones(4, 2)}


def schema() -> dict[int, dict[str, TensorSpec]]:
    return {
        layer: {
            A: TensorSpec(A, (2, 4), "float32"),
            B: TensorSpec(B, (4, 2), "float32"),
            VA: TensorSpec(VA, (2, 4), "float32"),
        }
        for layer in (0, 1, 2)
    }


# -- validate_layer -----------------------------------------------------------------------------


def test_validate_accepts_exact_tensors() -> None:
    validate_layer(good(), EXPECTED, WHERE)


def test_validate_accepts_empty_layer_when_nothing_expected() -> None:
    validate_layer({}, {}, WHERE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_validate_accepts_other_declared_dtypes(dtype: torch.dtype) -> None:
    expected = {A: TensorSpec(A, (2, 4), dtype_name(dtype))}
    validate_layer({A: torch.zeros(2, 4, dtype=dtype)}, expected, WHERE)


def test_validate_rejects_unexpected_name() -> None:
    tensors = {**good(), "q.lora_C.weight": torch.zeros(1)}
    with pytest.raises(InvalidArgument) as info:
        validate_layer(tensors, EXPECTED, WHERE)
    msg = str(info.value)
    assert msg == f"{WHERE}: unexpected tensor names ['q.lora_C.weight']"


def test_validate_rejects_missing_name() -> None:
    tensors = good()
    del tensors[B]
    with pytest.raises(InvalidArgument) as info:
        validate_layer(tensors, EXPECTED, WHERE)
    assert str(info.value) == f"{WHERE}: missing tensors ['{B}']"


def test_validate_rejects_renamed_tensor() -> None:
    tensors = good()
    tensors["q.lora_A.bias"] = tensors.pop(A)
    with pytest.raises(InvalidArgument, match=r"unexpected tensor names \['q\.lora_A\.bias'\]"):
        validate_layer(tensors, EXPECTED, WHERE)


def test_validate_rejects_wrong_shape() -> None:
    tensors = {**good(), B: torch.ones(2, 4)}
    with pytest.raises(InvalidArgument) as info:
        validate_layer(tensors, EXPECTED, WHERE)
    assert str(info.value) == f"{WHERE}: tensor {B} has shape (2, 4), expected (4, 2)"


def test_validate_rejects_extra_dimension() -> None:
    tensors = {**good(), A: torch.zeros(1, 2, 4)}
    with pytest.raises(InvalidArgument, match=rf"tensor {A} has shape \(1, 2, 4\), expected \(2, 4\)"):
        validate_layer(tensors, EXPECTED, WHERE)


@pytest.mark.parametrize(
    ("dtype", "name"),
    [(torch.float16, "float16"), (torch.bfloat16, "bfloat16"), (torch.float64, "float64"), (torch.int32, "int32")],
)
def test_validate_rejects_wrong_dtype(dtype: torch.dtype, name: str) -> None:
    tensors = {**good(), A: torch.zeros(2, 4, dtype=dtype)}
    with pytest.raises(InvalidArgument) as info:
        validate_layer(tensors, EXPECTED, WHERE)
    assert str(info.value) == f"{WHERE}: tensor {A} has dtype {name}, expected float32"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", [A, B])
def test_validate_rejects_non_finite(bad: float, name: str) -> None:
    tensors = good()
    tensors[name] = tensors[name].clone()
    tensors[name][1, 1] = bad
    with pytest.raises(InvalidArgument) as info:
        validate_layer(tensors, EXPECTED, WHERE)
    assert str(info.value) == f"{WHERE}: tensor {name} contains NaN or Inf"


def test_validate_rejects_nan_in_bf16() -> None:
    expected = {A: TensorSpec(A, (2, 4), "bfloat16")}
    t = torch.zeros(2, 4, dtype=torch.bfloat16)
    t[0, 3] = float("nan")
    with pytest.raises(InvalidArgument, match=f"tensor {A} contains NaN or Inf"):
        validate_layer({A: t}, expected, WHERE)


def test_validate_accepts_large_finite_values() -> None:
    tensors = {A: torch.full((2, 4), 3.0e38), B: torch.full((4, 2), -3.0e38)}
    validate_layer(tensors, EXPECTED, WHERE)


# -- names, dtypes, schema_of -------------------------------------------------------------------


def test_dtype_names() -> None:
    assert {name: dtype_name(dt) for name, dt in DTYPES.items()} == {n: n for n in DTYPES}


@pytest.mark.parametrize(
    ("name", "a", "b"),
    [
        ("q.lora_A.weight", True, False),
        ("base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.default.weight", False, True),
        ("lora_A", True, False),
        ("q.xlora_A.weight", False, False),
        ("q.lora_A_extra.weight", False, False),
        ("q.lora_a.weight", False, False),
        ("q.weight", False, False),
    ],
)
def test_is_lora_a_b_match_whole_name_parts(name: str, a: bool, b: bool) -> None:
    assert (is_lora_a(name), is_lora_b(name)) == (a, b)


def test_schema_of() -> None:
    layers = {0: good(), 3: {A: torch.zeros(2, 4, dtype=torch.bfloat16)}}
    assert schema_of(layers) == {
        0: {A: TensorSpec(A, (2, 4), "float32"), B: TensorSpec(B, (4, 2), "float32")},
        3: {A: TensorSpec(A, (2, 4), "bfloat16")},
    }


# -- UploadSpec / select ------------------------------------------------------------------------


def test_upload_spec_wants_both() -> None:
    spec = UploadSpec((0, 1))
    assert (spec.lora_a, spec.lora_b) == (True, True)
    assert spec.wants(A) and spec.wants(B) and spec.wants(VA)
    assert not spec.wants("q.weight")
    assert not spec.empty


def test_upload_spec_lora_a_only() -> None:
    spec = UploadSpec((0,), lora_a=True, lora_b=False)
    assert spec.wants(A) and spec.wants(VA)
    assert not spec.wants(B)
    assert not spec.empty


def test_upload_spec_lora_b_only() -> None:
    spec = UploadSpec((0,), lora_a=False, lora_b=True)
    assert spec.wants(B)
    assert not spec.wants(A) and not spec.wants(VA)


def test_upload_spec_empty() -> None:
    assert UploadSpec(()).empty
    assert UploadSpec((0, 1), lora_a=False, lora_b=False).empty
    assert not UploadSpec((0,), lora_a=False, lora_b=True).empty


def test_select_lora_a_only() -> None:
    got = select(schema(), UploadSpec((0, 2), lora_a=True, lora_b=False))
    assert got == {
        0: {A: TensorSpec(A, (2, 4), "float32"), VA: TensorSpec(VA, (2, 4), "float32")},
        2: {A: TensorSpec(A, (2, 4), "float32"), VA: TensorSpec(VA, (2, 4), "float32")},
    }


def test_select_lora_b_only() -> None:
    got = select(schema(), UploadSpec((1,), lora_a=False, lora_b=True))
    assert got == {1: {B: TensorSpec(B, (4, 2), "float32")}}


def test_select_everything() -> None:
    assert select(schema(), UploadSpec((0, 1, 2))) == schema()


def test_select_no_layers() -> None:
    assert select(schema(), UploadSpec(())) == {}


def test_select_preserves_upload_layer_order() -> None:
    assert list(select(schema(), UploadSpec((2, 0)))) == [2, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.float8_e5m2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_all_finite_finds_one_bad_value_anywhere(dtype: torch.dtype, bad: float) -> None:
    """aminmax reduces in vector lanes and tails: a single NaN/Inf at any position must show."""
    for n in (1, 7, 8, 15, 16, 17, 31, 33, 64, 65, 257):
        clean = torch.linspace(-3, 3, n).to(dtype)
        assert all_finite(clean)
        for i in range(n):
            t = clean.clone()
            t[i] = bad
            assert not all_finite(t), (n, i)
            assert not all_finite(t.reshape(1, n).t())  # any layout


def test_all_finite_of_empty_and_integer_tensors() -> None:
    assert all_finite(torch.empty(0, 3)) and all_finite(torch.arange(5)) and all_finite(torch.tensor(True))
