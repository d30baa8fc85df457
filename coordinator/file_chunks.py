"""Files in pieces for the Admin API's ExportAdapter stream, checked on receipt like adapter blobs.

The sender cuts each file into pieces that carry its path, index, total and the whole file's
sha256. The receiver (the `fedtree admin export` CLI) accepts a file's pieces only together and in
index order, each repeating the first one's total and digest, and keeps a file only when its
bytes match that digest; a stream that ends inside a file, or sends a file twice, is refused.
Protobuf stays at the edges: admin.py and admin_cli.py convert to and from FileChunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from common.admin_types import FilePiece
from common.codec import sha256
from common.errors import InvalidArgument

FILE_CHUNK = 1 << 20  # 1 MiB, as adapter chunks: well under gRPC's message limit


def split_files(files: Iterable[tuple[str, bytes]], chunk_size: int = FILE_CHUNK) -> Iterator[FilePiece]:
    """The pieces of every (path, bytes), file after file; an empty file is one empty piece."""
    for path, data in files:
        digest = sha256(data)
        total = max(1, -(-len(data) // chunk_size))
        for index in range(total):
            yield FilePiece(path, index, total, data[index * chunk_size : (index + 1) * chunk_size], digest)


def receive_files(pieces: Iterable[FilePiece]) -> dict[str, bytes]:
    """path -> bytes of a finite stream of pieces; InvalidArgument on any break of order or digest."""
    files: dict[str, bytes] = {}
    first: FilePiece | None = None
    parts: list[bytes] = []
    for piece in pieces:
        if first is None:
            if piece.path in files:
                raise InvalidArgument(f"file {piece.path!r} sent twice")
            if piece.index != 0:
                raise InvalidArgument(f"pieces of {piece.path!r} out of order: the first has index {piece.index}")
            if piece.total < 1 or len(piece.digest) != 32:
                raise InvalidArgument(
                    f"file {piece.path!r}: implausible total {piece.total} or sha256 of {len(piece.digest)} bytes"
                )
            first, parts = piece, []
        elif piece.path != first.path:
            raise InvalidArgument(
                f"a piece of {piece.path!r} arrived while {first.path!r} was incomplete ({len(parts)}/{first.total})"
            )
        elif piece.index != len(parts):
            raise InvalidArgument(f"pieces of {first.path!r} out of order: expected index {len(parts)}, got {piece.index}")
        elif (piece.total, piece.digest) != (first.total, first.digest):
            raise InvalidArgument(f"piece {piece.index} of {first.path!r} disagrees with piece 0's total or sha256")
        parts.append(piece.data)
        if len(parts) == first.total:
            data = b"".join(parts)
            if sha256(data) != first.digest:
                raise InvalidArgument(f"file {first.path!r}: sha256 mismatch, corrupted in transit")
            files[first.path] = data
            first = None
    if first is not None:
        raise InvalidArgument(f"stream ended inside {first.path!r} after {len(parts)}/{first.total} pieces")
    return files
