"""The expected adapter tensors of a run, and validation of received tensors against them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.errors import InvalidArgument

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


# layer index -> tensor name (relative to the layer) -> spec
Schema = dict[int, dict[str, TensorSpec]]


@dataclass(frozen=True)
class UploadSpec:
    """Which of a worker's tensors a push carries."""

    layers: tuple[int, ...]
    lora_a: bool = True
    lora_b: bool = True

    def wants(self, name: str) -> bool:
        return (self.lora_a and is_lora_a(name)) or (self.lora_b and is_lora_b(name))

    @property
    def empty(self) -> bool:
        return not self.layers or not (self.lora_a or self.lora_b)


def is_lora_a(name: str) -> bool:
    return "lora_A" in name.split(".")


def is_lora_b(name: str) -> bool:
    return "lora_B" in name.split(".")


def schema_of(layers: dict[int, dict[str, torch.Tensor]]) -> Schema:
    return {
        layer: {name: TensorSpec(name, tuple(t.shape), dtype_name(t.dtype)) for name, t in tensors.items()}
        for layer, tensors in layers.items()
    }


def validate_layer(tensors: dict[str, torch.Tensor], expected: dict[str, TensorSpec], where: str) -> None:
    """Reject tensors whose names, shapes or dtypes differ from `expected`, or that hold NaN/Inf."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise InvalidArgument(f"{where}: unexpected tensor names {unexpected}")
    if missing:
        raise InvalidArgument(f"{where}: missing tensors {missing}")
    for name, spec in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != spec.shape:
            raise InvalidArgument(f"{where}: tensor {name} has shape {tuple(tensor.shape)}, expected {spec.shape}")
        if dtype_name(tensor.dtype) != spec.dtype:
            raise InvalidArgument(f"{where}: tensor {name} has dtype {dtype_name(tensor.dtype)}, expected {spec.dtype}")
        if not bool(torch.isfinite(tensor).all()):
            raise InvalidArgument(f"{where}: tensor {name} contains NaN or Inf")


def select(schema: Schema, upload: UploadSpec) -> Schema:
    """The part of the schema that a push under `upload` must carry."""
    return {layer: {name: spec for name, spec in schema[layer].items() if upload.wants(name)} for layer in upload.layers}
