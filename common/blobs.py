"""One received blob, decoded and checked in one place: a push's update blobs on the coordinator
and a pull's blobs on the worker both go through `decode_blob`.

A blob is checked as it travelled (with a run wire dtype, float32 tensors arrive in it and the
blob's metadata says so, see `codec.to_wire`) and handed back as the sender had it: the float32
tensors restored by `codec.from_wire`. Nothing is restored by hand anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch

from common import codec
from common.errors import InvalidArgument
from common.schema import TensorSpec, dtype_name, validate_head, validate_layer

Tensors = dict[str, torch.Tensor]
LayerSpecs = Mapping[str, TensorSpec]


def as_sent(expected: LayerSpecs, wire_dtype: str | None) -> dict[str, TensorSpec]:
    """The specs of one layer as `codec.to_wire` sends it: its float32 tensors in the wire dtype,
    unless the layer already holds tensors of that dtype or none in float32 (then as it is)."""
    if wire_dtype is None:
        return dict(expected)
    name = dtype_name(codec.WIRE_DTYPES[wire_dtype])
    dtypes = {spec.dtype for spec in expected.values()}
    if name in dtypes or "float32" not in dtypes:
        return dict(expected)
    return {n: replace(spec, dtype=name) if spec.dtype == "float32" else spec for n, spec in expected.items()}


def decode_blob(
    blob: codec.BlobBytes,
    where: str,
    *,
    expected: LayerSpecs | None = None,
    head: bool = False,
    wire_dtype: str | None = None,
) -> Tensors:
    """Decode safetensors bytes, check them as they travelled, restore float32 from the wire dtype.

    The tensors handed back are views of `blob` when it is a writable buffer (a reassembled
    blob, see chunking.Assembler) and nothing had to be restored: no copy.

    `expected`: the layer's tensors (names, shapes, dtypes as the sender holds them); checked in
    the run's `wire_dtype` by `validate_layer` (finite, nothing missing or extra), and the blob
    must announce that wire dtype exactly when a cast was due. `head`: the classifier-head blob
    instead (label-keyed float32 rows, `validate_head`; the engine checks the width). Neither
    (a pull): decoded and restored only; the worker checks the tensors against its own schema.
    InvalidArgument, prefixed with `where`, names what is wrong.
    """
    try:
        tensors, meta = codec.decode(blob)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {exc}") from None
    due: str | None = None  # the wire dtype the blob must announce, when checked
    if head:
        validate_head(tensors, where, dtype=dtype_name(codec.WIRE_DTYPES[wire_dtype]) if wire_dtype else "float32")
        due = wire_dtype
    elif expected is not None:
        sent = as_sent(expected, wire_dtype)
        validate_layer(tensors, sent, where)
        due = wire_dtype if sent != dict(expected) else None
    if head or expected is not None:
        announced = meta.get(codec.WIRE_META_KEY)
        if announced != due:
            raise InvalidArgument(f"{where}: blob metadata announces wire dtype {announced or 'none'}, expected {due or 'none'}")
    try:
        return codec.from_wire(tensors, meta)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {exc}") from None
