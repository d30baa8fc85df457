"""The Admin API, its CLI, authentication, health and reflection against live coordinators."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from google.protobuf.json_format import MessageToJson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_federation import TRAIN, _run_all, _worker

from common import serde
from common.config import CoordinatorConfig, RunConfig
from common.exit_codes import ExitCode
from common.schema import TensorSpec
from common.types import JoinRequest
from coordinator.auth import bearer
from coordinator.server import Coordinator
from proto.fedtree.v1 import admin_pb2 as apb
from proto.fedtree.v1 import admin_pb2_grpc as apb_grpc
from proto.fedtree.v1 import federation_pb2 as pb
from proto.fedtree.v1 import federation_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
ADMIN, WORKER = "admin-secret", "worker-secret"


def start(tmp_path: Path, **run: object) -> Coordinator:
    cfg = CoordinatorConfig(
        host="127.0.0.1",
        port=0,
        state_dir=tmp_path / "state",
        admin_token=ADMIN,
        worker_token=WORKER,
        long_poll_s=1.0,
        insecure=True,
        run=RunConfig.model_validate({"round_deadline_s": 60, **run}),
    )
    coordinator = Coordinator(cfg)
    coordinator.start()
    return coordinator


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):  # type: ignore[no-untyped-def]
    """A fedtree run with 3 workers on the tiny model, finished; the coordinator keeps serving."""
    from testdata import write_client_data

    tmp = tmp_path_factory.mktemp("admin")
    coord = start(tmp, strategy="fedtree", rounds=3, min_workers=3, train=TRAIN, fedtree={"warmup_rounds": 1, "tau": -1.0})
    labels = [("sports", "tech"), ("sports", "tech"), ("food", "tech")]
    workers = [
        _worker(
            coord,
            tiny_model_dir,
            write_client_data(tmp / "data" / f"a{i}", labels[i], seed=i),
            tmp / f"o{i}",
            f"a{i}",
            token=WORKER,
        )
        for i in range(3)
    ]
    assert _run_all(workers) == [ExitCode.OK] * 3
    channel = grpc.insecure_channel(f"127.0.0.1:{coord.port}")
    yield coord, apb_grpc.AdminStub(channel)
    channel.close()
    coord.stop(grace=0.2)


def test_get_tree(finished) -> None:  # type: ignore[no-untyped-def]
    _, stub = finished
    tree = stub.GetTree(apb.GetTreeRequest(), metadata=bearer(ADMIN), timeout=10)
    assert tree.built and tree.strategy == "fedtree" and tree.built_round == 1
    assert sorted(tree.leaves) == ["a0", "a1", "a2"] and len(tree.merges) == 2
    as_json = json.loads(MessageToJson(tree))
    for layer in as_json["layers"]:
        assert sorted(w for c in layer["clusters"] for w in c["workers"]) == ["a0", "a1", "a2"]
        assert layer["clusterCount"] == len(layer["clusters"])
    assert any(layer.lambdas for layer in tree.layers if layer.cluster_count > 1)


def test_list_workers_status_rounds(finished) -> None:  # type: ignore[no-untyped-def]
    _, stub = finished
    workers = stub.ListWorkers(apb.ListWorkersRequest(), metadata=bearer(ADMIN), timeout=10).workers
    assert [w.worker_id for w in workers] == ["a0", "a1", "a2"]
    assert all(w.rounds_done == 3 and w.bytes_received > 0 and w.bytes_sent > 0 and w.address for w in workers)
    assert all("accuracy" in w.last_metrics for w in workers)
    status = stub.GetStatus(apb.GetStatusRequest(), metadata=bearer(ADMIN), timeout=10)
    assert status.phase == apb.PHASE_DONE and status.last_closed_round == 3 and status.rounds == 3 and status.workers == 3
    rounds = stub.GetRounds(apb.GetRoundsRequest(), metadata=bearer(ADMIN), timeout=10).rounds
    assert [r.round for r in rounds] == [1, 2, 3]
    assert all(len(r.accuracy) == 3 and "accuracy" in r.mean_metrics and r.pushes == 3 for r in rounds)


def test_export_adapter_and_cli(finished, tmp_path) -> None:  # type: ignore[no-untyped-def]
    coord, stub = finished
    files = {c.path for c in stub.ExportAdapter(apb.ExportAdapterRequest(worker_id="a1"), metadata=bearer(ADMIN), timeout=30)}
    assert files == {"adapter_config.json", "adapter_model.safetensors"}
    target = f"127.0.0.1:{coord.port}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "coordinator.admin_cli", "admin", *args, "--coordinator", target, "--token", ADMIN]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)

    tree = cli("tree")
    assert tree.returncode == 0, tree.stderr
    assert "client tree (average linkage)" in tree.stdout and "layer  0" in tree.stdout and "a2" in tree.stdout
    as_json = json.loads(cli("tree", "--json").stdout)
    assert sorted(as_json["leaves"]) == ["a0", "a1", "a2"]
    for command in ("status", "workers", "rounds"):
        out = cli(command)
        assert out.returncode == 0 and out.stdout.strip(), (command, out.stderr)
    exported = cli("export", "--worker", "a0", "--to", str(tmp_path / "adapter"))
    assert exported.returncode == 0 and (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    denied = subprocess.run(
        [sys.executable, "-m", "coordinator.admin_cli", "admin", "status", "--coordinator", target, "--token", WORKER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr


@pytest.mark.parametrize(
    ("service", "token", "code"),
    [
        ("admin", None, grpc.StatusCode.UNAUTHENTICATED),
        ("admin", WORKER, grpc.StatusCode.PERMISSION_DENIED),
        ("admin", "guess", grpc.StatusCode.UNAUTHENTICATED),
        ("admin", ADMIN, grpc.StatusCode.OK),
        ("federation", None, grpc.StatusCode.UNAUTHENTICATED),
        ("federation", ADMIN, grpc.StatusCode.PERMISSION_DENIED),
        ("federation", WORKER, grpc.StatusCode.OK),
    ],
)
def test_auth_matrix(finished, service: str, token: str | None, code: grpc.StatusCode) -> None:  # type: ignore[no-untyped-def]
    coord, _ = finished
    md = bearer(token) if token else None
    with grpc.insecure_channel(f"127.0.0.1:{coord.port}") as channel:
        try:
            if service == "admin":
                apb_grpc.AdminStub(channel).GetStatus(apb.GetStatusRequest(), metadata=md, timeout=10)
            else:
                pb_grpc.FederationStub(channel).GetRun(pb.GetRunRequest(worker_id="x"), metadata=md, timeout=10)
            got = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            got = exc.code()
    assert got == code


def test_pause_resume_evict_rebuild(tmp_path) -> None:
    coord = start(tmp_path, strategy="fedtree", rounds=5, min_workers=2, fedtree={"warmup_rounds": 1})
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{coord.port}")
        admin, fed = apb_grpc.AdminStub(channel), pb_grpc.FederationStub(channel)
        md_a, md_w = bearer(ADMIN), bearer(WORKER)
        schema = {0: {"q.lora_A.weight": TensorSpec("q.lora_A.weight", (2, 2), "float32")}}
        admin.Pause(apb.PauseRequest(), metadata=md_a, timeout=10)
        for w in ("x", "y"):
            fed.Join(serde.join_to_proto(JoinRequest(w, "fp", 5, schema)), metadata=md_w, timeout=10)
        status = admin.GetStatus(apb.GetStatusRequest(), metadata=md_a, timeout=10)
        assert status.phase == apb.PHASE_PAUSED and status.current_round == 0  # no round opens while paused
        admin.Resume(apb.ResumeRequest(), metadata=md_a, timeout=10)
        task = fed.GetTask(pb.GetTaskRequest(worker_id="x", wait_seconds=0), metadata=md_w, timeout=10)
        assert task.kind == pb.TASK_KIND_TRAIN and task.round == 1
        assert admin.RebuildTree(apb.RebuildTreeRequest(), metadata=md_a, timeout=10).round == 2
        assert admin.GetTree(apb.GetTreeRequest(), metadata=md_a, timeout=10).built is False
        admin.EvictWorker(apb.EvictWorkerRequest(worker_id="y"), metadata=md_a, timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            fed.GetTask(pb.GetTaskRequest(worker_id="y", wait_seconds=0), metadata=md_w, timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        states = {w.worker_id: w.state for w in admin.ListWorkers(apb.ListWorkersRequest(), metadata=md_a, timeout=10).workers}
        assert states["y"] == apb.WORKER_STATE_EVICTED
        assert coord.engine.current is not None and "y" not in coord.engine.current.participants
        with pytest.raises(grpc.RpcError) as info:
            admin.EvictWorker(apb.EvictWorkerRequest(worker_id="nobody"), metadata=md_a, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        channel.close()
    finally:
        coord.stop(grace=0.2)


def test_rebuild_needs_a_tree_strategy(tmp_path) -> None:
    coord = start(tmp_path, strategy="fedit", min_workers=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{coord.port}") as channel:
            fed = pb_grpc.FederationStub(channel)
            schema = {0: {"q.lora_A.weight": TensorSpec("q.lora_A.weight", (2, 2), "float32")}}
            fed.Join(serde.join_to_proto(JoinRequest("x", "fp", 5, schema)), metadata=bearer(WORKER), timeout=10)
            with pytest.raises(grpc.RpcError) as info:
                apb_grpc.AdminStub(channel).RebuildTree(apb.RebuildTreeRequest(), metadata=bearer(ADMIN), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        coord.stop(grace=0.2)


def test_health_serving_then_not_serving_and_reflection(tmp_path) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    coord = start(tmp_path)
    channel = grpc.insecure_channel(f"127.0.0.1:{coord.port}")
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"fedtree.v1.Federation", "fedtree.v1.Admin", "grpc.health.v1.Health"} <= services
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stopper = threading.Thread(target=coord.stop, kwargs={"grace": 2.0})
    stopper.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    stopper.join()
    channel.close()


def test_health_list_answers_what_reflection_advertises(tmp_path) -> None:
    """Reflection lists grpc.health.v1.Health/List: it must answer, not UNIMPLEMENTED."""
    coord = start(tmp_path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{coord.port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=10)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert {name: s.status for name, s in reply.statuses.items()} == {
            "": serving,
            "fedtree.v1.Federation": serving,
            "fedtree.v1.Admin": serving,
        }
    finally:
        coord.stop(grace=0.2)
