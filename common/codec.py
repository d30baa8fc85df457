"""Adapter tensors <-> safetensors bytes: the wire format of one (round, layer, role) blob.

safetensors keeps dtypes as they are (bf16/fp16 travel unconverted), needs no pickle, and its
header is plain JSON, so a bad blob is rejected before any tensor is materialised.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import threading
from collections.abc import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from common.errors import InvalidArgument

Tensors = dict[str, torch.Tensor]

_HEADER_LEN = struct.Struct("<Q")
# A safetensors header is a small JSON object; anything bigger than this is not ours.
MAX_HEADER_BYTES = 1 << 20


def encode(tensors: Tensors, metadata: dict[str, str] | None = None) -> bytes:
    """Serialise tensors (any dtype, made contiguous) to safetensors bytes."""
    flat = {name: t.detach().contiguous() for name, t in tensors.items()}
    return st_save(flat, metadata=metadata)


def read_header(blob: bytes | memoryview) -> dict[str, object]:
    """The parsed JSON header of a safetensors blob; InvalidArgument if it is not one."""
    if len(blob) < _HEADER_LEN.size:
        raise InvalidArgument(f"safetensors blob too short: {len(blob)} bytes")
    (length,) = _HEADER_LEN.unpack_from(blob, 0)
    if length > MAX_HEADER_BYTES or _HEADER_LEN.size + length > len(blob):
        raise InvalidArgument(f"safetensors header length {length} does not fit a {len(blob)}-byte blob")
    try:
        header = json.loads(bytes(blob[_HEADER_LEN.size : _HEADER_LEN.size + length]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidArgument(f"safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidArgument("safetensors header is not a JSON object")
    return header


def decode(blob: bytes) -> tuple[Tensors, dict[str, str]]:
    """Parse safetensors bytes into (tensors, metadata); InvalidArgument on anything malformed."""
    header = read_header(blob)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise InvalidArgument("safetensors __metadata__ is not a JSON object")
    try:
        tensors = st_load(bytes(blob))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InvalidArgument(f"not a valid safetensors blob: {exc}") from exc
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def sha256(blob: bytes | memoryview) -> bytes:
    """The 32-byte sha256 digest used to check a reassembled blob."""
    return hashlib.sha256(blob).digest()


# Optional reduced precision on the wire (RunConfig.wire_dtype): float32 tensors travel as this
# dtype and are restored to float32 on arrival; the blob's metadata says so.
WIRE_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
WIRE_META_KEY = "wire_dtype"


def to_wire(tensors: Tensors, wire_dtype: str | None) -> tuple[Tensors, dict[str, str]]:
    """(tensors with every float32 one cast to `wire_dtype`, metadata to add); unchanged when off.

    A layer that already holds tensors of the wire dtype is sent as it is: on arrival every
    tensor of that dtype is taken to have been float32, so the two must not mix.
    """
    if wire_dtype is None:
        return tensors, {}
    dtype = WIRE_DTYPES[wire_dtype]
    if any(t.dtype == dtype for t in tensors.values()) or not any(t.dtype == torch.float32 for t in tensors.values()):
        return tensors, {}
    with single_threaded():
        cast = {name: t.detach().to(dtype) if t.dtype == torch.float32 else t for name, t in tensors.items()}
    return cast, {WIRE_META_KEY: wire_dtype}


def from_wire(tensors: Tensors, metadata: dict[str, str]) -> Tensors:
    """Undo `to_wire`: tensors of the blob's announced wire dtype back to float32."""
    wire_dtype = metadata.get(WIRE_META_KEY)
    if wire_dtype is None:
        return tensors
    if wire_dtype not in WIRE_DTYPES:
        raise InvalidArgument(f"unknown wire dtype '{wire_dtype}' in blob metadata")
    dtype = WIRE_DTYPES[wire_dtype]
    with single_threaded():
        return {name: t.to(torch.float32) if t.dtype == dtype else t for name, t in tensors.items()}


_threads_lock = threading.Lock()
_threads_users = 0
_threads_before = 0


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch ops in this scope on one intra-op thread.

    Casting adapter tensors is memory-bound and each tensor is small: a second OpenMP thread
    gains nothing and, on a busy machine, every parallel region waits for it to be scheduled
    (measured: 64 MiB cast there and back took 2.8-4.0 s with 2 threads under load, 0.08-0.19 s
    with 1; docs/BENCHMARKS.md). Nested and concurrent scopes share one switch: the first to
    enter sets 1 thread, the last to leave restores the previous count.
    """
    global _threads_users, _threads_before
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
            if _threads_before != 1:
                torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and _threads_before != 1:
                torch.set_num_threads(_threads_before)
