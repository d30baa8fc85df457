"""Bad input over the real wire: every malformed push is rejected with a clear status code and
leaves the coordinator's state and the round's aggregate untouched."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import grpc
import pytest
import torch

from common import codec, serde
from common.chunking import BlobKey, ChunkData, Role, split
from common.grpc_options import CHANNEL_OPTIONS
from common.schema import schema_of
from common.types import JoinRequest, PushHeader
from proto.fedtree.v1 import federation_pb2 as pb
from proto.fedtree.v1 import federation_pb2_grpc as pb_grpc

A, B = "attn.q.lora_A.weight", "attn.q.lora_B.weight"
CHUNK = 1024


def good_update(value: float = 1.0) -> dict[int, dict[str, torch.Tensor]]:
    return {layer: {A: torch.full((4, 32), value), B: torch.full((32, 4), value)} for layer in (0, 1)}


@pytest.fixture
def rig(coordinator_factory):  # type: ignore[no-untyped-def]
    coord = coordinator_factory(strategy="fedit", rounds=1, min_workers=1, chunk_size=CHUNK)
    channel = grpc.insecure_channel(f"127.0.0.1:{coord.port}", options=CHANNEL_OPTIONS)
    stub = pb_grpc.FederationStub(channel)
    join = JoinRequest("w", "fingerprint-1", 10, schema_of(good_update()))
    stub.Join(serde.join_to_proto(join), timeout=10)
    task = stub.GetTask(pb.GetTaskRequest(worker_id="w", wait_seconds=0), timeout=10)
    assert task.kind == pb.TASK_KIND_TRAIN and task.round == 1
    yield coord, stub
    channel.close()


def chunks_of(update: dict[int, dict[str, torch.Tensor]], round: int = 1) -> list[ChunkData]:
    out: list[ChunkData] = []
    for layer, tensors in sorted(update.items()):
        out += list(split(codec.encode(tensors), BlobKey(round, layer, Role.UPDATE), CHUNK))
    return out


def push(
    stub: pb_grpc.FederationStub, chunks: list[ChunkData], round: int = 1, worker: str = "w", upload: str = "u1"
) -> pb.PushUpdateResponse:
    def requests() -> Iterator[pb.PushUpdateRequest]:
        yield serde.push_header_to_proto(PushHeader(worker, round, upload, 10, {"train_loss": 1.0}))
        for chunk in chunks:
            yield pb.PushUpdateRequest(chunk=serde.chunk_to_proto(chunk))

    return stub.PushUpdate(requests(), timeout=10)


def swap_first_two(chunks: list[ChunkData]) -> list[ChunkData]:
    return [chunks[1], chunks[0], *chunks[2:]]


def flip_byte(chunks: list[ChunkData]) -> list[ChunkData]:
    first = chunks[0]
    data = bytearray(first.data)
    data[-1] ^= 0xFF
    return [replace(first, data=bytes(data)), *chunks[1:]]


def with_tensor(name: str, tensor: torch.Tensor) -> list[ChunkData]:
    update = good_update()
    update[0][name] = tensor
    return chunks_of(update)


def garbage_blob() -> list[ChunkData]:
    update = good_update()
    return list(split(b"not a safetensors blob at all", BlobKey(1, 0, Role.UPDATE), CHUNK)) + chunks_of({1: update[1]})


CASES: dict[str, tuple[Callable[[], list[ChunkData]], grpc.StatusCode, str]] = {
    "out of order": (lambda: swap_first_two(chunks_of(good_update())), grpc.StatusCode.INVALID_ARGUMENT, "out of order"),
    "digest mismatch": (lambda: flip_byte(chunks_of(good_update())), grpc.StatusCode.INVALID_ARGUMENT, "blake3 digest mismatch"),
    "truncated": (lambda: chunks_of(good_update())[:-1], grpc.StatusCode.INVALID_ARGUMENT, "stream ended"),
    "unexpected name": (
        lambda: with_tensor("attn.k.lora_A.weight", torch.ones(4, 32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unexpected tensor names",
    ),
    "wrong shape": (lambda: with_tensor(A, torch.ones(4, 31)), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    "wrong dtype": (lambda: with_tensor(A, torch.ones(4, 32, dtype=torch.float16)), grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
    "nan": (lambda: with_tensor(B, torch.full((32, 4), float("nan"))), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    "inf": (lambda: with_tensor(B, torch.full((32, 4), float("inf"))), grpc.StatusCode.INVALID_ARGUMENT, "Inf"),
    "missing layer": (lambda: chunks_of({0: good_update()[0]}), grpc.StatusCode.INVALID_ARGUMENT, "missing layers"),
    "blob of another round": (lambda: chunks_of(good_update(), round=2), grpc.StatusCode.INVALID_ARGUMENT, "tagged for round 2"),
    "not safetensors": (garbage_blob, grpc.StatusCode.INVALID_ARGUMENT, "safetensors"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_push_rejected_and_state_unchanged(rig, case: str) -> None:  # type: ignore[no-untyped-def]
    coord, stub = rig
    make, code, words = CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        push(stub, make())
    assert info.value.code() == code
    assert words in info.value.details()
    engine = coord.engine
    assert engine.strategy._pending.sums == {} and engine.strategy.global_adapter == {}
    assert engine.current.pushed == {} and engine.store.pushes(1) == {} and engine.last_closed == 0
    # The round still accepts the worker's correct push afterwards.
    assert push(stub, chunks_of(good_update(2.0)), upload="good").accepted
    assert engine.last_closed == 1
    torch.testing.assert_close(engine.strategy.global_adapter[1][B], torch.full((32, 4), 2.0))


def test_push_for_another_round_is_failed_precondition(rig) -> None:  # type: ignore[no-untyped-def]
    coord, stub = rig
    with pytest.raises(grpc.RpcError) as info:
        push(stub, chunks_of(good_update(), round=2), round=2)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "round 2 is not open" in info.value.details()
    assert coord.engine.store.pushes(1) == {} and coord.engine.strategy._pending.sums == {}


def test_push_without_header_is_invalid(rig) -> None:  # type: ignore[no-untyped-def]
    _, stub = rig
    chunk = chunks_of(good_update())[0]
    with pytest.raises(grpc.RpcError) as info:
        stub.PushUpdate(iter([pb.PushUpdateRequest(chunk=serde.chunk_to_proto(chunk))]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header" in info.value.details()


def test_retried_push_is_counted_once(rig) -> None:  # type: ignore[no-untyped-def]
    coord, stub = rig
    first = push(stub, chunks_of(good_update(3.0)), upload="same")
    assert coord.engine.last_closed == 1  # the round closed on this push; its ack was "lost"
    again = push(stub, chunks_of(good_update(3.0)), upload="same")
    assert first.accepted and not first.duplicate and again.accepted and again.duplicate
    assert list(coord.engine.store.pushes(1)) == ["w"]
    torch.testing.assert_close(coord.engine.strategy.global_adapter[0][A], torch.full((4, 32), 3.0))
    with pytest.raises(grpc.RpcError) as info:  # a different upload for a closed round is stale
        push(stub, chunks_of(good_update(3.0)), upload="other")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_unknown_worker_is_not_found(rig) -> None:  # type: ignore[no-untyped-def]
    _, stub = rig
    with pytest.raises(grpc.RpcError) as info:
        stub.GetTask(pb.GetTaskRequest(worker_id="nobody", wait_seconds=0), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_join_with_other_fingerprint_is_refused(rig) -> None:  # type: ignore[no-untyped-def]
    coord, stub = rig
    join = JoinRequest("intruder", "fingerprint-2", 10, schema_of(good_update()))
    with pytest.raises(grpc.RpcError) as info:
        stub.Join(serde.join_to_proto(join), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "fingerprint" in info.value.details()
    assert "intruder" not in coord.engine.workers and coord.engine.fingerprint == "fingerprint-1"


def test_health_service_reports_serving(rig) -> None:  # type: ignore[no-untyped-def]
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    coord, _ = rig
    with grpc.insecure_channel(f"127.0.0.1:{coord.port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="fedtree.v1.Federation"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_unknown_enum_value_in_a_chunk_is_rejected(rig) -> None:  # type: ignore[no-untyped-def]
    coord, stub = rig
    chunk = serde.chunk_to_proto(chunks_of(good_update())[0])
    chunk.role = 42  # an enum value this coordinator does not know (proto3 keeps it as an int)

    def requests() -> Iterator[pb.PushUpdateRequest]:
        yield serde.push_header_to_proto(PushHeader("w", 1, "enum", 10, {}))
        yield pb.PushUpdateRequest(chunk=chunk)

    with pytest.raises(grpc.RpcError) as info:
        stub.PushUpdate(requests(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown role value 42" in info.value.details()
    assert coord.engine.store.pushes(1) == {} and coord.engine.strategy._pending.sums == {}


def test_oversize_blob_is_rejected_before_it_is_buffered(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from common.config import CoordinatorConfig, RunConfig
    from coordinator.server import Coordinator

    cfg = CoordinatorConfig(
        host="127.0.0.1",
        port=0,
        insecure=True,
        state_dir=tmp_path / "s",
        max_blob_bytes=1024,
        run=RunConfig(rounds=1, min_workers=1, chunk_size=CHUNK),
    )
    coord = Coordinator(cfg)
    coord.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{coord.port}", options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.FederationStub(channel)
            stub.Join(serde.join_to_proto(JoinRequest("w", "fingerprint-1", 10, schema_of(good_update()))), timeout=10)
            stub.GetTask(pb.GetTaskRequest(worker_id="w", wait_seconds=0), timeout=10)
            assert len(codec.encode(good_update()[0])) > 1024
            with pytest.raises(grpc.RpcError) as info:
                push(stub, chunks_of(good_update()))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "exceeds the limit of 1024" in info.value.details()
        assert coord.engine.store.pushes(1) == {} and coord.engine.strategy._pending.sums == {}
    finally:
        coord.stop(grace=0.2)
