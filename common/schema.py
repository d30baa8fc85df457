"""The expected adapter tensors of a run, and validation of received tensors against them.

Besides the per-layer adapter blobs, a run with `run.train.head_mode: cluster` (classification)
carries the classifier head as one extra blob at the reserved layer index `HEAD_LAYER`. Its
tensors are named by LABEL KEY (`task/label`, worker/model.py `label_key`); each is a float32
1-D tensor of length hidden + 1: the label's row of the output projection's weight (hidden
values) followed by its bias entry (0 for a head without bias). Only these label-indexed values
travel; other head weights (e.g. RoBERTa's classifier.dense) stay local. `validate_head` checks
such a blob; its names are not known in advance, so it is not part of a `Schema`.
"""

from __future__ import annotations

import math
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

# The reserved layer index of the classifier-head blob (no transformer has 65535 layers; it fits the
# wire's uint32 layer tag). In an expected-upload Schema (`select`) it maps to {}: "a head blob is
# due", its label-keyed tensors checked by `validate_head` instead of by name.
HEAD_LAYER = 65535
MAX_HEAD_LABELS = 100_000  # most label rows one head blob may carry
MAX_LABEL_KEY_CHARS = 1024  # longest label key accepted as a tensor name


@dataclass(frozen=True)
class UploadSpec:
    """Which of a worker's tensors a push carries."""

    layers: tuple[int, ...]  # adapter layer indices, plus HEAD_LAYER when the head rows are wanted
    lora_a: bool = True
    lora_b: bool = True

    def wants(self, name: str) -> bool:
        return (self.lora_a and is_lora_a(name)) or (self.lora_b and is_lora_b(name))

    @property
    def head(self) -> bool:
        """Does the push carry the classifier head's label rows (the HEAD_LAYER blob)?"""
        return HEAD_LAYER in self.layers

    @property
    def adapter_layers(self) -> tuple[int, ...]:
        return tuple(layer for layer in self.layers if layer != HEAD_LAYER)

    @property
    def empty(self) -> bool:
        return not self.head and (not self.adapter_layers or not (self.lora_a or self.lora_b))


def is_lora_a(name: str) -> bool:
    return "lora_A" in name.split(".")


def is_lora_b(name: str) -> bool:
    return "lora_B" in name.split(".")


def schema_of(layers: dict[int, dict[str, torch.Tensor]]) -> Schema:
    return {
        layer: {name: TensorSpec(name, tuple(t.shape), dtype_name(t.dtype)) for name, t in tensors.items()}
        for layer, tensors in layers.items()
    }


def all_finite(tensor: torch.Tensor) -> bool:
    """True unless the tensor holds a NaN or an Inf. One reduction pass (`aminmax`, which
    propagates NaN, and an Inf is the minimum or the maximum), with no temporary: about 9x
    faster than `isfinite(t).all()`, which writes a bool tensor of the same numel first."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    try:
        low, high = torch.aminmax(tensor)
    except (RuntimeError, NotImplementedError):  # a dtype without aminmax (float8): the plain check
        return bool(torch.isfinite(tensor).all())
    return math.isfinite(low.item()) and math.isfinite(high.item())


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
        if not all_finite(tensor):
            raise InvalidArgument(f"{where}: tensor {name} contains NaN or Inf")


def validate_head(tensors: dict[str, torch.Tensor], where: str, width: int | None = None, dtype: str = "float32") -> int:
    """Check a head blob (see the module docstring): 1 to MAX_HEAD_LABELS tensors with non-empty
    names, each `dtype`, 1-D, finite and of one common length of at least 2 (= `width` when
    given). Returns that length; raises InvalidArgument naming what is wrong."""
    if not tensors:
        raise InvalidArgument(f"{where}: head blob carries no label rows")
    if len(tensors) > MAX_HEAD_LABELS:
        raise InvalidArgument(f"{where}: head blob carries {len(tensors)} label rows, at most {MAX_HEAD_LABELS} are accepted")
    length: int | None = None
    for name, tensor in tensors.items():
        if not name.strip():
            raise InvalidArgument(f"{where}: head row with an empty label name")
        if len(name) > MAX_LABEL_KEY_CHARS:
            raise InvalidArgument(f"{where}: head row label name is {len(name)} characters, at most {MAX_LABEL_KEY_CHARS}")
        if dtype_name(tensor.dtype) != dtype:
            raise InvalidArgument(f"{where}: head row {name!r} has dtype {dtype_name(tensor.dtype)}, expected {dtype}")
        if tensor.dim() != 1:
            raise InvalidArgument(f"{where}: head row {name!r} has shape {tuple(tensor.shape)}, expected 1-D (hidden + 1)")
        if length is None:
            length = int(tensor.shape[0])
            if length < 2:
                raise InvalidArgument(f"{where}: head row {name!r} has length {length}, expected hidden + 1 >= 2")
            if width is not None and length != width:
                raise InvalidArgument(f"{where}: head row {name!r} has length {length}, expected the run's head width {width}")
        elif tensor.shape[0] != length:
            raise InvalidArgument(f"{where}: head row {name!r} has length {tensor.shape[0]}, other rows {length}")
        if not all_finite(tensor):
            raise InvalidArgument(f"{where}: head row {name!r} contains NaN or Inf")
    assert length is not None
    return length


def select(schema: Schema, upload: UploadSpec) -> Schema:
    """The part of the schema that a push under `upload` must carry (HEAD_LAYER -> {}: the head blob)."""
    adapter = upload.adapter_layers if upload.lora_a or upload.lora_b else ()
    out = {layer: {name: spec for name, spec in schema[layer].items() if upload.wants(name)} for layer in adapter}
    if upload.head:
        out[HEAD_LAYER] = {}
    return out
