"""head_mode cluster end to end: a real coordinator on port 0, in-process workers on the tiny BERT,
and raw pushes of bad head blobs over the real wire."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file
from test_federation import TRAIN, _run_all, _worker

from common import codec, serde
from common.chunking import BlobKey, ChunkData, Role, split
from common.exit_codes import ExitCode
from common.grpc_options import CHANNEL_OPTIONS
from common.schema import HEAD_LAYER, UploadSpec, schema_of
from common.types import JoinRequest, PushHeader
from proto.fedtree.v1 import federation_pb2 as pb
from proto.fedtree.v1 import federation_pb2_grpc as pb_grpc
from worker.checkpoint import load_checkpoint
from worker.model import head_rows
from worker.runner import Worker

CLUSTER = {**TRAIN, "head_mode": "cluster"}


def _namespaced(path: Path, task: str) -> Path:
    """Give a client's labels a task namespace (head rows keyed task/label)."""
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "task": task}))
    return path


def _record_head_pushes(worker: Worker) -> dict[int, dict[str, torch.Tensor]]:
    """round -> the head rows the worker pushed (wraps update_for and client.push)."""
    pushed: dict[int, dict[str, torch.Tensor]] = {}
    original = worker.update_for
    state: dict[str, dict[str, torch.Tensor]] = {}

    def update_for(upload: UploadSpec) -> dict[int, dict[str, torch.Tensor]]:
        update = original(upload)
        if HEAD_LAYER in update:
            state["last"] = {k: t.clone() for k, t in update[HEAD_LAYER].items()}
        return update

    worker.update_for = update_for  # type: ignore[method-assign]
    push = worker.client.push

    def record(header: PushHeader, update: dict, chunk_size: int):  # type: ignore[no-untyped-def]
        if HEAD_LAYER in update:
            pushed[header.round] = state["last"]
        return push(header, update, chunk_size)

    worker.client.push = record  # type: ignore[method-assign]
    return pushed


def _rows(worker: Worker) -> dict[str, torch.Tensor]:
    assert worker.lm is not None
    return head_rows(worker.lm, worker.data.label_keys)


def test_fedit_cluster_heads_share_rows_per_label(coordinator_factory, tiny_model_dir, client_data, tmp_path):
    coord = coordinator_factory(strategy="fedit", rounds=2, min_workers=3, train=CLUSTER)
    data = [
        client_data("h0", ("sports", "tech")),
        client_data("h1", ("sports", "tech")),
        _namespaced(client_data("h2", ("sports", "tech")), "other"),  # same names, another task: disjoint keys
    ]
    workers = [_worker(coord, tiny_model_dir, d, tmp_path / f"o{i}", f"h{i}") for i, d in enumerate(data)]
    pushed = [_record_head_pushes(w) for w in workers]
    assert _run_all(workers) == [ExitCode.OK] * 3
    engine = coord.engine
    assert engine.done and engine.last_closed == 2 and engine.head_width == 33  # hidden 32 + bias
    assert all(sorted(p) == [1, 2] for p in pushed), "every round pushes the head"
    rows = [_rows(w) for w in workers]
    assert set(rows[2]) == {"other/sports", "other/tech"}
    # after the final pull, h0 and h1 hold the same row of each shared label: the mean of round 2's pushes
    for key in ("sports", "tech"):
        assert torch.equal(rows[0][key], rows[1][key])
        assert not torch.equal(pushed[0][2][key], pushed[1][2][key]), "the two pushes differed"
        torch.testing.assert_close(rows[0][key], (pushed[0][2][key] + pushed[1][2][key]) / 2)  # 24 examples each
        assert not torch.allclose(rows[0][key], rows[2][f"other/{key}"])
    # h2 shares no label: it keeps its own rows (the mean of its own push alone)
    for key in ("other/sports", "other/tech"):
        torch.testing.assert_close(rows[2][key], pushed[2][2][key])
    assert set(engine.strategy.heads.rows["global"]) == {"sports", "tech", "other/sports", "other/tech"}
    # the worker checkpoint and the exported PEFT adapter carry the pulled rows
    for worker, own in zip(workers, rows, strict=True):
        restored = load_checkpoint(worker.out)
        for key, row in head_rows(restored.lm, worker.data.label_keys).items():
            assert torch.equal(row, own[key])
        exported = load_file(str(worker.out / "adapter" / "adapter_model.safetensors"))
        weight = next(t for k, t in exported.items() if "classifier" in k and k.endswith("weight"))
        for i, key in enumerate(worker.data.label_keys):
            assert torch.equal(weight[i], own[key][:-1])


def test_fedtree_cluster_heads_shared_inside_the_deepest_cluster(coordinator_factory, tiny_model_dir, client_data, tmp_path):
    # fixed_k 2: two clusters in every layer (the tiny model's cut alone keeps the four together)
    coord = coordinator_factory(
        strategy="fedtree", rounds=3, min_workers=4, train=CLUSTER, fedtree={"warmup_rounds": 1, "fixed_k": 2}
    )
    labels = [("sports", "tech"), ("sports", "tech"), ("food", "tech"), ("food", "tech")]
    workers = [_worker(coord, tiny_model_dir, client_data(f"t{i}", labels[i]), tmp_path / f"o{i}", f"t{i}") for i in range(4)]
    pushed = [_record_head_pushes(w) for w in workers]
    assert _run_all(workers) == [ExitCode.OK] * 4
    engine = coord.engine
    assert engine.done and engine.last_closed == 3
    assert all(sorted(p) == [2, 3] for p in pushed), "no head push during warmup (round 1 builds the tree)"
    strategy = engine.strategy
    deepest = strategy.clusters()[-1]
    assert any(len(cluster) > 1 for cluster in deepest), deepest  # else nothing is shared
    by_id = {w.config.worker_id: w for w in workers}
    index = {w.config.worker_id: i for i, w in enumerate(workers)}
    groups = {w: strategy.head_group(w, 4) for w in by_id}
    for cluster in deepest:
        assert len({groups[w] for w in cluster}) == 1
        rows = {w: _rows(by_id[w]) for w in cluster}
        for key in set.intersection(*(set(r) for r in rows.values())):
            first = rows[cluster[0]][key]
            assert all(torch.equal(r[key], first) for r in rows.values()), (cluster, key)
            # the cluster's mean of round 3's pushes of that label (equal example counts)
            rows3 = [pushed[index[w]][3][key] for w in cluster if key in pushed[index[w]][3]]
            torch.testing.assert_close(first, sum(rows3) / len(rows3))
    assert len(deepest) == 2
    a, b = deepest[0][0], deepest[1][0]  # tech, a label of both clusters, is averaged separately in each
    assert not torch.equal(_rows(by_id[a])["tech"], _rows(by_id[b])["tech"])


# -- bad head blobs over the real wire ---------------------------------------------------------------

A, B = "attn.q.lora_A.weight", "attn.q.lora_B.weight"
CHUNK = 1024


def _adapters(value: float = 1.0) -> dict[int, dict[str, torch.Tensor]]:
    return {layer: {A: torch.full((4, 32), value), B: torch.full((32, 4), value)} for layer in (0, 1)}


def _chunks(update: dict[int, dict[str, torch.Tensor]]) -> list[ChunkData]:
    out: list[ChunkData] = []
    for layer, tensors in sorted(update.items()):
        out += list(split(codec.encode(tensors), BlobKey(1, layer, Role.UPDATE), CHUNK))
    return out


def _push(stub: pb_grpc.FederationStub, worker: str, upload: str, update: dict) -> pb.PushUpdateResponse:
    def requests() -> Iterator[pb.PushUpdateRequest]:
        yield serde.push_header_to_proto(PushHeader(worker, 1, upload, 10, {"train_loss": 1.0}))
        for chunk in _chunks(update):
            yield pb.PushUpdateRequest(chunk=serde.chunk_to_proto(chunk))

    return stub.PushUpdate(requests(), timeout=10)


@pytest.fixture
def rig(coordinator_factory):  # type: ignore[no-untyped-def]
    coord = coordinator_factory(strategy="fedit", rounds=1, min_workers=2, chunk_size=CHUNK, train={"head_mode": "cluster"})
    channel = grpc.insecure_channel(f"127.0.0.1:{coord.port}", options=CHANNEL_OPTIONS)
    stub = pb_grpc.FederationStub(channel)
    for worker in ("w", "v"):
        stub.Join(serde.join_to_proto(JoinRequest(worker, "fingerprint-1", 10, schema_of(_adapters()))), timeout=10)
    task = stub.GetTask(pb.GetTaskRequest(worker_id="w", wait_seconds=0), timeout=10)
    assert task.kind == pb.TASK_KIND_TRAIN and HEAD_LAYER in task.upload.layers
    yield coord, stub
    channel.close()


GOOD = {"t/a": torch.arange(5, dtype=torch.float32), "t/b": torch.ones(5)}
BAD = {
    "nan": ({"t/a": torch.tensor([1.0, float("nan"), 0, 0, 0]), "t/b": torch.ones(5)}, "contains NaN"),
    "2-D": ({"t/a": torch.ones(1, 5)}, "expected 1-D"),
    "dtype": ({"t/a": torch.ones(5, dtype=torch.float16)}, "dtype float16"),
    "lengths": ({"t/a": torch.ones(5), "t/b": torch.ones(4)}, "other rows"),
    "empty name": ({"": torch.ones(5)}, "empty label name"),
    "width": ({"t/a": torch.ones(6)}, "head width 5"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_head_push_rejected_and_sums_unchanged(rig, case: str) -> None:  # type: ignore[no-untyped-def]
    coord, stub = rig
    engine = coord.engine
    assert _push(stub, "v", "v-good", {**_adapters(3.0), HEAD_LAYER: GOOD}).accepted  # fixes the width: 5
    heads = engine.strategy.heads
    before = ({g: {k: t.clone() for k, t in s.items()} for g, s in heads._sums.items()}, dict(heads.labels_of))
    adapters_before = {layer: {n: t.clone() for n, t in s.items()} for layer, s in engine.strategy._pending.sums.items()}
    rows, words = BAD[case]
    with pytest.raises(grpc.RpcError) as info:
        _push(stub, "w", "w-bad", {**_adapters(), HEAD_LAYER: rows})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.details() and "head" in info.value.details()
    after = ({g: dict(s) for g, s in heads._sums.items()}, dict(heads.labels_of))
    assert after[1] == before[1] and after[0].keys() == before[0].keys()
    for group, sums in before[0].items():
        assert sums.keys() == after[0][group].keys() and all(torch.equal(t, after[0][group][k]) for k, t in sums.items())
    assert all(
        torch.equal(t, engine.strategy._pending.sums[layer][n]) for layer, s in adapters_before.items() for n, t in s.items()
    )
    assert set(engine.store.pushes(1)) == {"v"} and "w" not in engine.current.pushed
    # a push without its head blob is incomplete
    with pytest.raises(grpc.RpcError) as info:
        _push(stub, "w", "w-headless", _adapters())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "missing the head blob" in info.value.details()
    # the worker's correct push still closes the round: the mean of both rows of t/a, v's alone for t/b
    assert _push(stub, "w", "w-good", {**_adapters(), HEAD_LAYER: {"t/a": torch.full((5,), 2.0)}}).accepted
    assert engine.last_closed == 1
    torch.testing.assert_close(heads.rows["global"]["t/a"], (torch.arange(5, dtype=torch.float32) + 2.0) / 2)
    torch.testing.assert_close(heads.rows["global"]["t/b"], torch.ones(5))


def test_client_side_dp_clips_the_head_rows_with_the_adapter(coordinator_factory, tiny_model_dir, client_data, tmp_path):
    from worker.model import build_model

    clip = 0.01
    coord = coordinator_factory(
        strategy="fedit", rounds=1, min_workers=2, train=CLUSTER, privacy={"clip_norm": clip, "noise_multiplier": 0.0}
    )
    workers = [_worker(coord, tiny_model_dir, client_data(f"d{i}"), tmp_path / f"o{i}", f"d{i}") for i in range(2)]
    assert _run_all(workers) == [ExitCode.OK] * 2
    run = coord.engine.run
    keys = workers[0].data.label_keys
    start = head_rows(build_model(tiny_model_dir, keys, run.lora, run.seed, True), keys)  # the seeded rows, shared
    mean = coord.engine.strategy.heads.rows["global"]
    # each worker's whole update (adapter + head rows) was clipped to `clip`: so is the mean's head part
    moved = sum(float((mean[k] - start[k]).pow(2).sum()) for k in keys) ** 0.5
    assert 0 < moved <= clip + 1e-6
