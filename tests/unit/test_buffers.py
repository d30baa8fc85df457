"""common.buffers.BufferPool: a receive buffer is handed out again only once nothing refers to it."""

from __future__ import annotations

import gc

import torch

from common import codec
from common.buffers import BufferPool
from common.chunking import BlobKey, Role, assemble_all, split

KEY = BlobKey(1, 0, Role.UPDATE)


def test_a_dropped_buffer_is_reused_a_busy_one_never() -> None:
    pool = BufferPool(1 << 20)
    first = pool.take(1000)
    address = torch.frombuffer(first, dtype=torch.uint8).data_ptr()
    tensor = torch.frombuffer(first, dtype=torch.uint8)[10:20].view(torch.int16)  # a view keeps it busy
    del first
    second = pool.take(1000)
    assert torch.frombuffer(second, dtype=torch.uint8).data_ptr() != address and pool.reused == 0
    del tensor
    gc.collect()
    third = pool.take(900)  # up to twice the size asked for fits
    assert len(third) == 900 and torch.frombuffer(third, dtype=torch.uint8).data_ptr() == address and pool.reused == 1
    assert not third.readonly


def test_a_much_larger_free_buffer_is_not_wasted_on_a_small_blob() -> None:
    pool = BufferPool(1 << 20)
    pool.take(1000)  # dropped at once: free
    pool.take(400)
    assert pool.reused == 0


def test_the_pool_forgets_the_least_recently_used_beyond_its_budget() -> None:
    pool = BufferPool(3000)
    a, b = pool.take(1000), pool.take(1000)
    del a, b
    assert pool.nbytes == 2000
    pool.take(2000)  # needs room: the older of the two is forgotten (freed, as nothing refers to it)
    assert pool.nbytes <= 3000
    huge = pool.take(10_000)  # over the budget: a buffer of its own, never pooled
    assert len(huge) == 10_000 and pool.nbytes <= 3000
    assert len(pool.take(0)) == 0


def test_reassembly_through_a_pool_overwrites_every_byte_and_leaves_live_tensors_alone() -> None:
    pool = BufferPool(1 << 20)
    first = codec.encode({"w": torch.arange(300, dtype=torch.float32)})
    second = codec.encode({"w": -torch.arange(300, dtype=torch.float32)})
    ((_, blob),) = assemble_all(split(first, KEY, 100), 1 << 20, pool=pool)
    kept, _ = codec.decode(blob)
    del blob
    ((_, blob2),) = assemble_all(split(second, KEY, 100), 1 << 20, pool=pool)
    assert pool.reused == 0 and bytes(blob2) == second  # the first buffer is busy: `kept` views it
    assert torch.equal(kept["w"], torch.arange(300, dtype=torch.float32))
    del kept, blob2
    gc.collect()
    ((_, blob3),) = assemble_all(split(second, KEY, 100), 1 << 20, pool=pool)
    assert pool.reused == 1 and bytes(blob3) == second  # reused, every stale byte overwritten
