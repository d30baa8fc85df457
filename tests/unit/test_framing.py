"""common.framing: tensors straight into chunk messages, byte for byte what building the blob,
splitting it and framing each chunk makes, for both digests (golden bytes included)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec import GOLDEN, golden_tensors

from common import codec, framing, wire
from common.chunking import Assembler, BlobKey, Role, split
from common.digest import DIGEST_NAMES, DigestName

KEY = BlobKey(1, 0, Role.UPDATE)
# The digests of test_codec.GOLDEN (162 bytes), from the blake3 and hashlib references.
GOLDEN_DIGESTS = {
    "blake3": "509e4672b4389d9301fbc3d459b033773095cee34ce665474831960fd33b6c27",
    "sha256": "f0f723367c70ff5344a305f3238c8cd36eb7ffc59dd6a090783e98ebe08649ec",
}


@pytest.mark.parametrize("algorithm", DIGEST_NAMES)
def test_golden_push_frames(algorithm: DigestName) -> None:
    first, second = framing.frames(codec.layout(golden_tensors(), {"round": "1"}), KEY, 128, algorithm, push=True)
    digest = bytes.fromhex(GOLDEN_DIGESTS[algorithm])
    # PushUpdateRequest field 2 (chunk, 81 bytes): round 1, role 3, index 1, total 2 (layer 0 is left out),
    # digest (32 bytes), blob_size 162, data (the blob's last 34 bytes)
    expected = bytes.fromhex("125108011803200128023220") + digest + bytes.fromhex("38a2014222") + GOLDEN[128:]
    assert second == expected
    assert first.endswith(GOLDEN[:128])
    assert framing.digest_layout(codec.layout(golden_tensors(), {"round": "1"}), algorithm) == digest


tensor_sets = st.lists(
    st.tuples(st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int8]), st.integers(0, 70)),
    max_size=4,
).map(lambda specs: {f"t{i}": torch.arange(n).to(dtype) for i, (dtype, n) in enumerate(specs)})


@settings(max_examples=150, deadline=None)
@given(tensor_sets, st.integers(1, 300), st.sampled_from(DIGEST_NAMES), st.booleans())
def test_frames_equal_split_of_the_built_blob(
    tensors: dict[str, torch.Tensor], chunk_size: int, algorithm: DigestName, push: bool
) -> None:
    meta = {"round": "1", "layer": "0"}
    blob = codec.encode(tensors, meta)
    encode = wire.encode_push_chunk if push else wire.encode_chunk
    expected = [encode(c) for c in split(blob, KEY, chunk_size, algorithm=algorithm)]
    assert list(framing.frames(codec.layout(tensors, meta), KEY, chunk_size, algorithm, push)) == expected


def test_frames_use_a_known_digest_as_given() -> None:
    frames = list(framing.frames(codec.layout(golden_tensors()), KEY, 64, "blake3", push=False, digest=b"k" * 32))
    assert all(wire.decode_chunk(f).digest == b"k" * 32 for f in frames)


def test_frames_reject_a_non_positive_chunk_size() -> None:
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        list(framing.frames(codec.layout(golden_tensors()), KEY, 0, "blake3", push=True))


@pytest.mark.parametrize("algorithm", DIGEST_NAMES)
def test_frames_reassemble_and_decode_to_the_tensors(algorithm: DigestName) -> None:
    tensors = {"a": torch.randn(33, 7), "b": torch.randn(5).to(torch.bfloat16)}
    asm = Assembler(1 << 20, algorithm)
    done = [asm.feed(wire.decode_chunk(f)) for f in framing.frames(codec.layout(tensors), KEY, 100, algorithm, push=False)]
    assert done[:-1] == [None] * (len(done) - 1) and done[-1] is not None
    got, _ = codec.decode(done[-1][1])
    assert all(torch.equal(got[n], t) for n, t in tensors.items())
