"""Authorisation matrix: every RPC x {no credentials, wrong worker, right worker, admin} with
mutual TLS and both tokens configured. Allowed calls may still fail for domain reasons
(NOT_FOUND, FAILED_PRECONDITION, ...), never for an authentication reason."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from common import serde
from common.config import ClientTlsConfig, CoordinatorConfig, RunConfig, ServerTlsConfig
from common.grpc_options import CHANNEL_OPTIONS
from common.schema import TensorSpec
from common.tls import secure_channel
from common.types import JoinRequest, PushHeader
from coordinator.auth import bearer
from coordinator.certs import make_all
from coordinator.server import Coordinator
from proto.fedtree.v1 import admin_pb2 as apb
from proto.fedtree.v1 import admin_pb2_grpc as apb_grpc
from proto.fedtree.v1 import federation_pb2 as pb
from proto.fedtree.v1 import federation_pb2_grpc as pb_grpc

ADMIN, WORKER = "admin-token", "worker-token"
SCHEMA = {0: {"q.lora_A.weight": TensorSpec("q.lora_A.weight", (2, 2), "float32")}}
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE}


def _push(stub: pb_grpc.FederationStub, md: Any) -> Any:
    head = serde.push_header_to_proto(PushHeader("w0", 1, "u", 1, {}))
    return stub.PushUpdate(iter([head]), metadata=md, timeout=10)


FEDERATION: dict[str, Callable[[pb_grpc.FederationStub, Any], Any]] = {
    "GetRun": lambda s, md: s.GetRun(pb.GetRunRequest(worker_id="w0"), metadata=md, timeout=10),
    "Join": lambda s, md: s.Join(serde.join_to_proto(JoinRequest("w0", "fp", 5, SCHEMA)), metadata=md, timeout=10),
    "GetTask": lambda s, md: s.GetTask(pb.GetTaskRequest(worker_id="w0", wait_seconds=0), metadata=md, timeout=10),
    "PullAdapters": lambda s, md: list(s.PullAdapters(pb.PullAdaptersRequest(worker_id="w0", round=1), metadata=md, timeout=10)),
    "PushUpdate": _push,
    "ReportMetrics": lambda s, md: s.ReportMetrics(pb.ReportMetricsRequest(worker_id="w0", round=1), metadata=md, timeout=10),
    "Heartbeat": lambda s, md: s.Heartbeat(pb.HeartbeatRequest(worker_id="w0"), metadata=md, timeout=10),
}
ADMIN_RPCS: dict[str, Callable[[apb_grpc.AdminStub, Any], Any]] = {
    "GetTree": lambda s, md: s.GetTree(apb.GetTreeRequest(), metadata=md, timeout=10),
    "ListWorkers": lambda s, md: s.ListWorkers(apb.ListWorkersRequest(), metadata=md, timeout=10),
    "GetStatus": lambda s, md: s.GetStatus(apb.GetStatusRequest(), metadata=md, timeout=10),
    "GetRounds": lambda s, md: s.GetRounds(apb.GetRoundsRequest(), metadata=md, timeout=10),
    "ExportAdapter": lambda s, md: list(s.ExportAdapter(apb.ExportAdapterRequest(worker_id="w0"), metadata=md, timeout=10)),
    "EvictWorker": lambda s, md: s.EvictWorker(apb.EvictWorkerRequest(worker_id="nobody"), metadata=md, timeout=10),
    "Pause": lambda s, md: s.Pause(apb.PauseRequest(), metadata=md, timeout=10),
    "Resume": lambda s, md: s.Resume(apb.ResumeRequest(), metadata=md, timeout=10),
    "RebuildTree": lambda s, md: s.RebuildTree(apb.RebuildTreeRequest(), metadata=md, timeout=10),
}
# who: (certificate, token)
WHO = {
    "no credentials": (None, None),
    "wrong worker": ("w1", WORKER),  # w1's certificate, acting as w0
    "right worker": ("w0", WORKER),
    "admin": ("admin", ADMIN),
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, Path]]:
    tmp = tmp_path_factory.mktemp("authz")
    make_all(tmp / "certs", ["w0", "w1"], ["localhost", "127.0.0.1"])
    certs = tmp / "certs"
    tls = ServerTlsConfig(cert=certs / "coordinator.pem", key=certs / "coordinator.key", client_ca=certs / "ca.pem")
    cfg = CoordinatorConfig(
        host="127.0.0.1",
        port=0,
        state_dir=tmp / "state",
        tls=tls,
        worker_token=WORKER,
        admin_token=ADMIN,
        run=RunConfig(min_workers=5),
    )
    coord = Coordinator(cfg)
    coord.start()
    yield coord, certs
    coord.stop(grace=0.2)


def call(rig: tuple[Coordinator, Path], who: str, service: str, rpc: str) -> grpc.StatusCode:
    coord, certs = rig
    cert, token = WHO[who]
    tls = ClientTlsConfig(
        ca=certs / "ca.pem", cert=certs / f"{cert}.pem" if cert else None, key=certs / f"{cert}.key" if cert else None
    )
    md = bearer(token) if token else None
    with secure_channel(f"127.0.0.1:{coord.port}", tls, False, CHANNEL_OPTIONS) as channel:
        try:
            if service == "federation":
                FEDERATION[rpc](pb_grpc.FederationStub(channel), md)
            else:
                ADMIN_RPCS[rpc](apb_grpc.AdminStub(channel), md)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


CASES = [("federation", rpc) for rpc in FEDERATION] + [("admin", rpc) for rpc in ADMIN_RPCS]


@pytest.mark.parametrize(("service", "rpc"), CASES)
@pytest.mark.parametrize("who", list(WHO))
def test_authorisation(rig, who: str, service: str, rpc: str) -> None:  # type: ignore[no-untyped-def]
    code = call(rig, who, service, rpc)
    allowed = (service == "federation" and who == "right worker") or (service == "admin" and who == "admin")
    if allowed:
        assert code not in AUTH_CODES, f"{who} was refused {rpc}: {code}"
    elif who == "no credentials":
        assert code == grpc.StatusCode.UNAVAILABLE  # no client certificate: the TLS handshake fails
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED, f"{who} on {rpc}: {code}"
