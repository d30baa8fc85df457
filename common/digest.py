"""The digest that checks every transferred blob: BLAKE3 by default, sha256 as a run option.

Both are cryptographic and 32 bytes long. BLAKE3 runs at several GB/s on one core (about 4x
sha256 here), so checking a blob costs far less than moving it. The run names the algorithm
(`RunConfig.digest`, sent to workers in the run spec); protocol 1.1 workers follow it, and a
coordinator refuses, at join, a worker too old to know it (common/version.py).
"""

from __future__ import annotations

import hashlib
from typing import Literal, Protocol

import blake3

Bytes = bytes | bytearray | memoryview
DigestName = Literal["blake3", "sha256"]
DIGEST_NAMES: tuple[DigestName, ...] = ("blake3", "sha256")
DEFAULT_DIGEST: DigestName = "blake3"
DIGEST_SIZE = 32  # bytes, for both


class Hasher(Protocol):
    """A running digest: feed the bytes in order, read the digest once at the end."""

    def update(self, data: Bytes, /) -> object: ...

    def digest(self) -> bytes: ...


def hasher(name: DigestName) -> Hasher:
    """A fresh running digest of algorithm `name` (single-threaded: the callers run in parallel)."""
    if name == "blake3":
        return blake3.blake3()
    if name == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown digest {name!r}; expected one of {DIGEST_NAMES}")


def digest(name: DigestName, *parts: Bytes) -> bytes:
    """The digest of the concatenation of `parts` (no concatenation is built)."""
    h = hasher(name)
    for part in parts:
        h.update(part)
    return h.digest()
