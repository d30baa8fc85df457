"""Reusable receive buffers: a reassembled blob lands in memory that an earlier blob used.

A blob's tensors are views of the buffer it was reassembled in (common/codec.py), so a buffer is
busy until the last of them is gone. Writing into fresh memory costs a page fault per 4 KiB page
(measured: copying 64 MiB into fresh buffers took 55-90 ms of CPU, into reused ones 26-31 ms,
hash included), more than the copy itself; so each receiver keeps the buffers of blobs it has
finished with and hands them out again. A buffer is free again when nothing but the pool refers
to it: every view of it (a memoryview, a tensor made by `torch.frombuffer`) holds a reference to
the array, so its reference count says so exactly. The pool remembers at most `max_bytes` of
buffers (busy or free, the least recently handed out forgotten first), so it never holds more
memory alive than that on its own; blobs larger than `max_bytes` get a buffer of their own.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import numpy as np
import torch

DEFAULT_POOL_BYTES = 512 << 20


def empty_buffer(size: int) -> np.ndarray:
    """An uninitialised byte array (pages are faulted in as it is written). Allocated by torch,
    not numpy: numpy asks for transparent huge pages on arrays of 4 MiB and more, and the
    first write into those took twice as long here (the kernel compacts memory to find them)."""
    return torch.empty(size, dtype=torch.uint8).numpy()


def _refs(arrays: dict[int, np.ndarray], key: int) -> int:
    """References to a pooled array, as counted from here (calibrated below on a free one)."""
    array = arrays[key]
    return sys.getrefcount(array)


_FREE_REFS = _refs({0: np.empty(0)}, 0)


class BufferPool:
    """Writable byte buffers for blobs of known size, reused once their blobs are dropped."""

    def __init__(self, max_bytes: int = DEFAULT_POOL_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._arrays: OrderedDict[int, np.ndarray] = OrderedDict()  # id -> array, least recently handed out first
        self._bytes = 0
        self.reused = 0  # buffers handed out again (for tests and the benchmark)

    def take(self, size: int) -> memoryview:
        """A writable buffer of exactly `size` bytes, uninitialised (fill all of it)."""
        if size <= 0:
            return memoryview(bytearray())
        with self._lock:
            for key in list(self._arrays):
                # free, and not wastefully large: at most twice the size asked for
                if size <= self._arrays[key].size <= 2 * size and _refs(self._arrays, key) <= _FREE_REFS:
                    self._arrays.move_to_end(key)
                    self.reused += 1
                    return self._arrays[key].data[:size]
            array = empty_buffer(size)
            if size <= self.max_bytes:
                while self._arrays and self._bytes + size > self.max_bytes:
                    _, old = self._arrays.popitem(last=False)  # forgotten: freed when its views are
                    self._bytes -= old.size
                self._arrays[id(array)] = array
                self._bytes += size
            return array.data

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers the pool keeps (busy or free)."""
        with self._lock:
            return self._bytes
