"""Adapter tensors <-> safetensors bytes: the wire format of one (round, layer, role) blob.

safetensors keeps dtypes as they are (bf16/fp16 travel unconverted), needs no pickle, and its
header is plain JSON, so a bad blob is rejected before any tensor is materialised.

Both directions are written here rather than through the safetensors package, to move each
payload byte as few times as possible:
- `layout` describes a blob without building it: its header bytes plus a view of every tensor's
  memory; `common/framing.py` copies those views straight into chunk messages (one copy), and
  `encode` joins them when a whole blob is wanted.
- `decode` hands back tensors that are views of the received buffer (no copy), after checking
  the header as strictly as safetensors does (dtypes, shapes, offsets contiguous and exactly
  covering the data).
The bytes are the safetensors format as the safetensors package writes it (compact JSON header
padded with spaces to a multiple of 8, tensors ordered by dtype then name), except that metadata
keys are sorted (safetensors writes them in hash order, which differs from process to process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import struct
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from common.errors import InvalidArgument

Tensors = dict[str, torch.Tensor]
BlobBytes = bytes | bytearray | memoryview

_HEADER_LEN = struct.Struct("<Q")
# A safetensors header is a small JSON object; anything bigger than this is not ours.
MAX_HEADER_BYTES = 1 << 20
METADATA_KEY = "__metadata__"

# safetensors dtype names; the order is safetensors' own, which sorts a blob's tensors by it
# (last first), then by name.
_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "U64": torch.uint64,
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_RANK = {name: rank for rank, name in enumerate(_DTYPES)}
_LITTLE_ENDIAN = sys.byteorder == "little"


@dataclass(frozen=True)
class Layout:
    """One blob, not built: `head` (length prefix + padded JSON header), then `data`, each
    tensor's bytes as a view of its memory, in blob order. `size` = the blob's length."""

    head: bytes
    data: tuple[memoryview, ...]
    size: int

    @property
    def pieces(self) -> tuple[BlobBytes, ...]:
        return (self.head, *self.data)


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor as a view of its memory (keeps the tensor alive)."""
    flat = tensor.reshape(-1).view(torch.uint8)
    return flat.numpy().data


def layout(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Layout:
    """The safetensors layout of `tensors` (any supported dtype, made contiguous; no copy of
    tensors that already are)."""
    if not _LITTLE_ENDIAN:  # pragma: no cover - every platform we run on is little-endian
        raise RuntimeError("the safetensors writer assumes a little-endian host")
    flat: list[tuple[str, str, torch.Tensor]] = []
    for name, tensor in tensors.items():
        dtype = _NAMES.get(tensor.dtype)
        if dtype is None:
            raise ValueError(f"tensor {name}: dtype {tensor.dtype} cannot be stored in safetensors")
        flat.append((name, dtype, tensor.detach().cpu().contiguous()))
    flat.sort(key=lambda item: (-_RANK[item[1]], item[0]))
    header: dict[str, object] = {}
    if metadata:
        header[METADATA_KEY] = {str(k): str(v) for k, v in sorted(metadata.items())}
    data: list[memoryview] = []
    offset = 0
    for name, dtype, tensor in flat:
        raw = _raw_bytes(tensor)
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        data.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    head = _HEADER_LEN.pack(len(text)) + text
    return Layout(head, tuple(data), len(head) + offset)


def encode(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise tensors (any dtype, made contiguous) to safetensors bytes (one copy)."""
    return b"".join(layout(tensors, metadata).pieces)


def read_header(blob: BlobBytes) -> dict[str, object]:
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


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(name: str, info: object) -> _Entry:
    """One tensor's header entry, checked as safetensors checks it."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise InvalidArgument(f"not a valid safetensors blob: tensor {name!r} needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise InvalidArgument(f"not a valid safetensors blob: tensor {name!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise InvalidArgument(f"not a valid safetensors blob: tensor {name!r} has shape {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) or offsets[0] > offsets[1]:
        raise InvalidArgument(f"not a valid safetensors blob: tensor {name!r} has data_offsets {offsets!r}")
    torch_dtype = _DTYPES[dtype]
    if math.prod(shape) * torch_dtype.itemsize != offsets[1] - offsets[0]:
        raise InvalidArgument(
            f"not a valid safetensors blob: tensor {name!r} of shape {shape} {dtype} does not take {offsets[1] - offsets[0]} bytes"
        )
    return _Entry(name, torch_dtype, tuple(shape), offsets[0], offsets[1])


def _as_buffer(blob: BlobBytes | torch.Tensor) -> torch.Tensor:
    """A 1-D uint8 tensor over the blob's memory: shared with a writable buffer (a bytearray, a
    writable memoryview, a uint8 tensor), copied once from read-only bytes (tensors must not
    alias memory that Python considers immutable)."""
    if isinstance(blob, torch.Tensor):
        if blob.dtype != torch.uint8 or blob.dim() != 1 or not blob.is_contiguous():
            raise ValueError("a blob tensor must be 1-D contiguous uint8")
        return blob
    view = memoryview(blob)
    if view.readonly:
        view = memoryview(bytearray(view))
    if len(view) == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(view.cast("B"), dtype=torch.uint8)


def _view(buffer: torch.Tensor, entry: _Entry, start: int) -> torch.Tensor:
    raw = buffer[start + entry.begin : start + entry.end]
    if (start + entry.begin) % entry.dtype.itemsize:  # misaligned for its dtype: the only copy
        raw = raw.clone()
    return raw.view(entry.dtype).reshape(entry.shape)


def decode(blob: BlobBytes | torch.Tensor) -> tuple[Tensors, dict[str, str]]:
    """Parse safetensors bytes into (tensors, metadata); InvalidArgument on anything malformed.

    The tensors are views of `blob`'s memory when it is writable (a reassembled buffer), so they
    keep it alive and share it: nothing is copied. Read-only `bytes` are copied once first.
    """
    buffer = _as_buffer(blob)
    raw = buffer.numpy().data
    header = read_header(raw)
    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict):
        raise InvalidArgument("safetensors __metadata__ is not a JSON object")
    if not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidArgument("not a valid safetensors blob: __metadata__ values must be strings")
    entries = sorted((_entry(name, info) for name, info in header.items()), key=lambda e: (e.begin, e.end))
    start = _HEADER_LEN.size + _HEADER_LEN.unpack_from(raw, 0)[0]
    expected = 0
    for entry in entries:
        if entry.begin != expected:
            raise InvalidArgument(f"not a valid safetensors blob: tensor {entry.name!r} does not start where the previous ends")
        expected = entry.end
    if start + expected != len(buffer):
        raise InvalidArgument(
            f"not a valid safetensors blob: the tensors take {expected} bytes, the blob holds {len(buffer) - start} after its header"
        )
    tensors = {entry.name: _view(buffer, entry, start) for entry in entries}
    return tensors, dict(metadata)


def sha256(blob: BlobBytes) -> bytes:
    """The 32-byte sha256 of some bytes (the admin export's file digest; blobs use common/digest.py)."""
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
