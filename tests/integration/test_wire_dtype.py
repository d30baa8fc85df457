"""run.wire_dtype: float32 adapters travel as bf16/fp16 both ways and arrive as float32."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from common import codec
from common.chunking import Role
from common.errors import InvalidArgument
from common.schema import schema_of
from common.types import JoinRequest, PushHeader, TaskKind
from coordinator.transfer import UpdateReceiver
from worker.client import FederationClient

A, B = "attn.q.lora_A.weight", "attn.q.lora_B.weight"


def update(seed: int) -> dict[int, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {layer: {A: torch.randn(4, 32, generator=gen), B: torch.randn(32, 4, generator=gen)} for layer in (0, 1)}


# -- codec helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("wire", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_to_wire_then_from_wire_restores_float32_at_wire_precision(wire: str, dtype: torch.dtype) -> None:
    tensors = update(0)[0]
    sent, meta = codec.to_wire(tensors, wire)
    assert meta == {codec.WIRE_META_KEY: wire} and all(t.dtype == dtype for t in sent.values())
    blob = codec.encode(sent, meta)
    assert sum(t.nbytes for t in sent.values()) * 2 == sum(t.nbytes for t in tensors.values())  # half the bytes
    back = codec.from_wire(*codec.decode(blob))
    for name, t in tensors.items():
        assert back[name].dtype == torch.float32
        assert torch.equal(back[name], t.to(dtype).float())


def test_wire_dtype_off_or_native_low_precision_sends_as_is() -> None:
    tensors = update(0)[0]
    assert codec.to_wire(tensors, None) == (tensors, {})
    native = {n: t.to(torch.bfloat16) for n, t in tensors.items()}  # a bf16 model: nothing to restore later
    sent, meta = codec.to_wire(native, "bf16")
    assert sent is native and meta == {}
    assert codec.from_wire(native, {}) is native


def test_unknown_wire_dtype_in_metadata_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="unknown wire dtype"):
        codec.from_wire({}, {codec.WIRE_META_KEY: "fp8"})


# -- the coordinator's receiver -----------------------------------------------------------------


def test_receiver_accepts_wire_dtype_and_restores_float32_but_refuses_float32_then() -> None:
    from common.chunking import BlobKey, split

    expected = schema_of(update(0))
    header = PushHeader("w", 1, "u", 10, {})

    def feed(receiver: UpdateReceiver, tensors: dict[int, dict[str, torch.Tensor]], wire: str | None) -> None:
        for layer, named in tensors.items():
            sent, meta = codec.to_wire(named, wire)
            for chunk in split(codec.encode(sent, meta), BlobKey(1, layer, Role.UPDATE), 256):
                receiver.feed(chunk)

    receiver = UpdateReceiver(header, expected, 1 << 20, wire_dtype="bf16")
    feed(receiver, update(1), "bf16")
    got = receiver.finish()
    assert all(t.dtype == torch.float32 for named in got.values() for t in named.values())
    assert torch.equal(got[0][A], update(1)[0][A].to(torch.bfloat16).float())

    strict = UpdateReceiver(header, expected, 1 << 20, wire_dtype="bf16")
    with pytest.raises(InvalidArgument, match="dtype float32, expected bfloat16"):
        feed(strict, update(1), None)


# -- over the wire ------------------------------------------------------------------------------


@pytest.fixture
def clients(coordinator_factory) -> Iterator[tuple[FederationClient, FederationClient]]:  # type: ignore[no-untyped-def]
    coord = coordinator_factory(strategy="fedit", rounds=2, min_workers=2, wire_dtype="bf16", chunk_size=1024)
    pair = tuple(FederationClient(f"127.0.0.1:{coord.port}", f"w{i}", retry_for_s=10, insecure=True) for i in range(2))
    yield pair  # type: ignore[misc]
    for c in pair:
        c.close()


def test_bf16_on_the_wire_round_trip(clients: tuple[FederationClient, FederationClient]) -> None:
    pushed = {c.worker_id: update(i) for i, c in enumerate(clients)}
    for c in clients:
        _, run = c.get_run()
        assert run.wire_dtype == "bf16" and c.wire_dtype == "bf16"
        c.join(JoinRequest(c.worker_id, "fp", 10, schema_of(pushed[c.worker_id])))
    for c in clients:
        task = c.get_task(wait_s=5)
        assert (task.kind, task.round) == (TaskKind.TRAIN, 1)
        result = c.push(PushHeader(c.worker_id, 1, f"{c.worker_id}-1", 10, {}), pushed[c.worker_id], 1024)
        assert result.accepted
    task = clients[0].get_task(wait_s=5)
    assert (task.kind, task.round) == (TaskKind.TRAIN, 2)
    pulled = clients[0].pull(2)
    for layer in (0, 1):
        for name in (A, B):
            got = pulled[layer][Role.CLUSTER][name]
            sums = sum(p[layer][name].to(torch.bfloat16).float() for p in pushed.values())
            assert got.dtype == torch.float32  # restored on arrival
            assert torch.equal(got, (sums / 2).to(torch.bfloat16).float())  # mean of bf16 uploads, sent as bf16


def test_casts_run_single_threaded_and_restore_the_thread_count() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with codec.single_threaded():
            assert torch.get_num_threads() == 1
            with codec.single_threaded():  # nested scopes share the switch
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
