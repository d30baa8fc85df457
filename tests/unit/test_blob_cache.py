"""coordinator.transfer.BlobCache: a download is hashed and framed once for every worker, within
a byte budget past which it is framed again per stream (never hashed again)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from common import codec, framing
from common.chunking import BlobKey, Role
from coordinator import transfer
from coordinator.strategies import Download
from coordinator.transfer import BlobCache

CHUNK = 1000


def item(layer: int, value: float = 1.0) -> Download:
    return Download(layer, Role.CLUSTER, "global", {"q.lora_A.weight": torch.full((8, 64), value)})


def expected_frames(round: int, d: Download) -> list[bytes]:
    layout = codec.layout(d.tensors, {"round": str(round), "layer": str(d.layer), "role": "cluster"})
    return list(framing.frames(layout, BlobKey(round, d.layer, d.role), CHUNK, "blake3", push=False))


def test_a_blob_is_encoded_once_and_its_messages_kept() -> None:
    cache = BlobCache()
    first = cache.get(1, 2, item(0), CHUNK)
    assert first.frames is not None and list(first.messages()) == expected_frames(2, item(0))
    assert cache.get(1, 2, item(0), CHUNK) is first
    assert cache.nbytes == sum(len(f) for f in first.frames) and len(cache) == 1


def test_past_the_byte_budget_a_blob_is_framed_per_stream_but_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    want = expected_frames(2, item(1))
    hashed: list[int] = []
    real = framing.digest_layout
    monkeypatch.setattr(framing, "digest_layout", lambda layout, algorithm: hashed.append(1) or real(layout, algorithm))
    size = codec.layout(item(0).tensors).size
    cache = BlobCache(max_bytes=int(1.5 * size))
    kept, streamed = cache.get(1, 2, item(0), CHUNK), cache.get(1, 2, item(1), CHUNK)
    assert kept.frames is not None and streamed.frames is None
    for _ in range(3):  # every stream gets the same bytes, made again from the tensors
        assert list(streamed.messages()) == want
    assert cache.get(1, 2, item(1), CHUNK) is streamed and len(hashed) == 2  # one hash per blob
    assert cache.nbytes <= 1.5 * size


def test_concurrent_pulls_of_a_blob_build_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    cache = BlobCache()
    real = cache._encode

    def slow(*args):  # type: ignore[no-untyped-def]
        built.append(1)
        time.sleep(0.2)
        return real(*args)

    monkeypatch.setattr(cache, "_encode", slow)
    got: list[transfer.EncodedDownload] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(1, 2, item(0), CHUNK))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(built) == 1 and len(got) == 4 and all(g is got[0] for g in got)


def test_a_newer_version_evicts_the_older_ones() -> None:
    cache = BlobCache()
    cache.get(1, 2, item(0), CHUNK)
    cache.get(1, 2, item(1), CHUNK)
    newer = cache.get(2, 3, item(0, 2.0), CHUNK)
    assert len(cache) == 1 and cache.nbytes == sum(len(f) for f in newer.frames or ())
    old = cache.get(1, 2, item(0), CHUNK)  # a late stream of the old version: built for it, not kept
    assert list(old.messages()) == expected_frames(2, item(0)) and len(cache) == 1
