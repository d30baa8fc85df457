"""Unit tests for common.chunking: split blobs into tagged chunks and reassemble them strictly."""

from __future__ import annotations

import dataclasses
import hashlib

import blake3
import pytest

from common.chunking import Assembler, BlobKey, ChunkData, Role, assemble_all, split
from common.digest import DIGEST_NAMES, DigestName
from common.errors import InvalidArgument

CS = 16  # a small chunk size keeps every case tiny
KEY = BlobKey(round=3, layer=1, role=Role.UPDATE)
OTHER = BlobKey(round=3, layer=2, role=Role.UPDATE)
MAX = 1 << 20


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((seed * 31 + i * 7) % 256 for i in range(n))


def chunks_of(n: int, key: BlobKey = KEY, seed: int = 0) -> list[ChunkData]:
    return list(split(payload(n, seed), key, CS))


def reference_digest(algorithm: DigestName, blob: bytes) -> bytes:
    """The digest from the algorithm's own library (not common.digest)."""
    return blake3.blake3(blob).digest() if algorithm == "blake3" else hashlib.sha256(blob).digest()


def feed_all(chunks: list[ChunkData], max_blob_bytes: int = MAX) -> list[tuple[BlobKey, memoryview] | None]:
    asm = Assembler(max_blob_bytes)
    return [asm.feed(c) for c in chunks]


# -- split + assemble ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", DIGEST_NAMES)
@pytest.mark.parametrize(
    ("size", "count"),
    [(0, 1), (1, 1), (CS - 1, 1), (CS, 1), (CS + 1, 2), (int(3.5 * CS), 4)],
)
def test_split_assemble_round_trip(size: int, count: int, algorithm: DigestName) -> None:
    blob = payload(size)
    chunks = list(split(blob, KEY, CS, algorithm=algorithm))

    assert len(chunks) == count
    assert [c.index for c in chunks] == list(range(count))
    digest = reference_digest(algorithm, blob)
    for c in chunks:
        assert (c.key, c.total, c.digest, c.blob_size) == (KEY, count, digest, size)
        assert len(c.data) <= CS
    assert b"".join(c.data for c in chunks) == blob
    if size:
        assert all(len(c.data) == CS for c in chunks[:-1])
        assert len(chunks[-1].data) == size - CS * (count - 1)

    assert list(assemble_all(chunks, MAX, algorithm)) == [(KEY, blob)]


def test_default_digest_is_blake3() -> None:
    blob = payload(3 * CS)
    assert {c.digest for c in split(blob, KEY, CS)} == {blake3.blake3(blob).digest()}


def test_reassembled_blob_is_a_writable_buffer_of_its_own() -> None:
    blob = payload(3 * CS)
    (key, got), *_ = assemble_all(split(blob, KEY, CS), MAX)
    assert isinstance(got, memoryview) and not got.readonly and got == blob
    got[0] ^= 0xFF  # its own memory: the chunks' bytes are untouched
    assert got != blob and payload(3 * CS) == blob


def test_feed_returns_none_until_the_last_chunk() -> None:
    blob = payload(3 * CS)
    asm = Assembler(MAX)
    results = [asm.feed(c) for c in split(blob, KEY, CS)]
    assert results == [None, None, (KEY, blob)]
    assert not asm.in_progress
    asm.finish()  # nothing pending


def test_in_progress_flag() -> None:
    asm = Assembler(MAX)
    assert not asm.in_progress
    asm.feed(chunks_of(2 * CS)[0])
    assert asm.in_progress


def test_split_rejects_non_positive_chunk_size() -> None:
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        list(split(b"abc", KEY, 0))


def test_role_values_match_proto() -> None:
    assert (Role.CLUSTER, Role.EXTERNAL, Role.UPDATE) == (1, 2, 3)


def test_several_blobs_back_to_back_in_order() -> None:
    k1 = BlobKey(1, 0, Role.UPDATE)
    k2 = BlobKey(1, 1, Role.UPDATE)
    k3 = BlobKey(1, 2, Role.CLUSTER)
    k4 = BlobKey(1, 0, Role.EXTERNAL)
    blobs = [(k1, payload(3 * CS + 5, 1)), (k2, b""), (k3, payload(1, 3)), (k4, payload(2 * CS, 4))]
    stream = [c for key, blob in blobs for c in split(blob, key, CS)]
    assert len(stream) == 4 + 1 + 1 + 2
    assert list(assemble_all(stream, MAX)) == blobs


def test_same_key_twice_in_a_row_is_two_blobs() -> None:
    a, b = payload(CS + 3, 1), payload(CS + 3, 2)
    stream = list(split(a, KEY, CS)) + list(split(b, KEY, CS))
    assert list(assemble_all(stream, MAX)) == [(KEY, a), (KEY, b)]


def test_blob_size_equal_to_limit_is_accepted() -> None:
    blob = payload(2 * CS)
    assert list(assemble_all(split(blob, KEY, CS), max_blob_bytes=2 * CS)) == [(KEY, blob)]


# -- rejections ---------------------------------------------------------------------------------


def test_first_chunk_index_not_zero() -> None:
    chunks = chunks_of(3 * CS)
    with pytest.raises(InvalidArgument, match="out of order.*first chunk has index 1"):
        feed_all(chunks[1:])


def test_skipped_index() -> None:
    chunks = chunks_of(3 * CS)
    with pytest.raises(InvalidArgument, match="out of order.*expected index 1, got 2"):
        feed_all([chunks[0], chunks[2]])


def test_duplicated_chunk() -> None:
    chunks = chunks_of(3 * CS)
    with pytest.raises(InvalidArgument, match="out of order.*expected index 1, got 0"):
        feed_all([chunks[0], chunks[0], chunks[1], chunks[2]])


def test_duplicated_middle_chunk() -> None:
    chunks = chunks_of(3 * CS)
    with pytest.raises(InvalidArgument, match="expected index 2, got 1"):
        feed_all([chunks[0], chunks[1], chunks[1], chunks[2]])


def test_chunk_of_another_blob_interleaved() -> None:
    mine, other = chunks_of(3 * CS), chunks_of(3 * CS, key=OTHER, seed=5)
    msg = r"layer 2 role update arrived while blob round 3 layer 1 role update was incomplete \(1/3 chunks\)"
    with pytest.raises(InvalidArgument, match=msg):
        feed_all([mine[0], other[0], mine[1], mine[2]])


def test_interleaved_chunk_with_other_role_same_layer() -> None:
    mine = chunks_of(2 * CS)
    other = chunks_of(2 * CS, key=BlobKey(3, 1, Role.CLUSTER))
    with pytest.raises(InvalidArgument, match="arrived while blob"):
        feed_all([mine[0], other[1]])


def test_changed_total_mid_blob() -> None:
    chunks = chunks_of(3 * CS)
    bad = dataclasses.replace(chunks[1], total=4)
    with pytest.raises(InvalidArgument, match="chunk 1 of round 3 layer 1 role update disagrees with chunk 0's tags"):
        feed_all([chunks[0], bad, chunks[2]])


def test_changed_digest_mid_blob() -> None:
    chunks = chunks_of(3 * CS)
    bad = dataclasses.replace(chunks[2], digest=hashlib.sha256(b"other").digest())
    with pytest.raises(InvalidArgument, match="chunk 2 .* disagrees with chunk 0's tags"):
        feed_all([chunks[0], chunks[1], bad])


def test_changed_blob_size_mid_blob() -> None:
    chunks = chunks_of(3 * CS)
    bad = dataclasses.replace(chunks[1], blob_size=3 * CS + 1)
    with pytest.raises(InvalidArgument, match="disagrees with chunk 0's tags"):
        feed_all([chunks[0], bad, chunks[2]])


@pytest.mark.parametrize("algorithm", DIGEST_NAMES)
def test_digest_mismatch_after_flipped_byte(algorithm: DigestName) -> None:
    chunks = list(split(payload(3 * CS), KEY, CS, algorithm=algorithm))
    data = bytearray(chunks[1].data)
    data[4] ^= 0x01
    chunks[1] = dataclasses.replace(chunks[1], data=bytes(data))
    asm = Assembler(MAX, algorithm)
    assert asm.feed(chunks[0]) is None
    assert asm.feed(chunks[1]) is None
    with pytest.raises(
        InvalidArgument, match=f"round 3 layer 1 role update: {algorithm} digest mismatch, blob corrupted in transit"
    ):
        asm.feed(chunks[2])
    assert not asm.in_progress  # the bad blob is dropped; the assembler can carry on
    good = payload(CS, 9)
    assert [asm.feed(c) for c in split(good, KEY, CS, algorithm=algorithm)] == [(KEY, good)]


@pytest.mark.parametrize(("sent", "checked"), [("sha256", "blake3"), ("blake3", "sha256")])
def test_digest_of_the_other_algorithm_is_a_mismatch(sent: DigestName, checked: DigestName) -> None:
    with pytest.raises(InvalidArgument, match=f"{checked} digest mismatch"):
        list(assemble_all(split(payload(2 * CS), KEY, CS, algorithm=sent), MAX, checked))


def test_announced_blob_size_over_limit() -> None:
    chunks = chunks_of(2 * CS)
    with pytest.raises(InvalidArgument, match=f"blob of {2 * CS} bytes exceeds the limit of {2 * CS - 1}"):
        feed_all(chunks, max_blob_bytes=2 * CS - 1)


def test_more_bytes_than_announced() -> None:
    chunks = chunks_of(2 * CS)
    fat = dataclasses.replace(chunks[1], data=bytes(chunks[1].data) + b"x")
    with pytest.raises(InvalidArgument, match=f"received more bytes than the announced {2 * CS}"):
        feed_all([chunks[0], fat])


def test_more_bytes_than_announced_in_first_chunk() -> None:
    chunk = ChunkData(KEY, 0, 1, hashlib.sha256(b"abcd").digest(), 2, b"abcd")
    with pytest.raises(InvalidArgument, match="received more bytes than the announced 2"):
        feed_all([chunk])


def test_fewer_bytes_than_announced() -> None:
    blob = payload(CS)
    short = ChunkData(KEY, 0, 1, hashlib.sha256(blob).digest(), CS + 5, blob)
    with pytest.raises(InvalidArgument, match=f"size {CS} != announced {CS + 5}"):
        feed_all([short])


def test_truncated_stream_finish_mid_blob() -> None:
    chunks = chunks_of(3 * CS)
    asm = Assembler(MAX)
    asm.feed(chunks[0])
    with pytest.raises(InvalidArgument, match="stream ended inside round 3 layer 1 role update after 1/3 chunks"):
        asm.finish()


def test_truncated_stream_assemble_all() -> None:
    first, second = payload(CS, 1), payload(3 * CS, 2)
    stream = list(split(first, OTHER, CS)) + list(split(second, KEY, CS))[:2]
    got = []
    with pytest.raises(InvalidArgument, match="stream ended inside .* after 2/3 chunks"):
        for item in assemble_all(stream, MAX):
            got.append(item)
    assert got == [(OTHER, first)]  # the complete blob was delivered before the error


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_digest_not_32_bytes(length: int) -> None:
    chunk = dataclasses.replace(chunks_of(4)[0], digest=b"\x00" * length)
    with pytest.raises(InvalidArgument, match=f"the blake3 digest must be 32 bytes, got {length}"):
        feed_all([chunk])


@pytest.mark.parametrize("total", [0, -1, 6])
def test_implausible_total(total: int) -> None:
    chunk = dataclasses.replace(chunks_of(4)[0], total=total)  # a 4-byte blob has at most 5 chunks
    with pytest.raises(InvalidArgument, match=f"implausible chunk total {total}"):
        feed_all([chunk])
