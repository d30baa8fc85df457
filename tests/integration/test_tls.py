"""Mutual TLS: certificates map to worker ids; wrong CA, expired certificates and a worker
presenting another worker's id are rejected; plaintext needs an explicit opt-in."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import pytest

from common import serde
from common.config import ClientTlsConfig, CoordinatorConfig, RunConfig, ServerTlsConfig
from common.errors import ConfigError
from common.grpc_options import CHANNEL_OPTIONS
from common.schema import TensorSpec
from common.tls import secure_channel
from common.types import JoinRequest
from coordinator.certs import issue, make_all, make_ca, write_pair
from coordinator.server import Coordinator
from proto.fedtree.v1 import federation_pb2 as pb
from proto.fedtree.v1 import federation_pb2_grpc as pb_grpc

SCHEMA = {0: {"q.lora_A.weight": TensorSpec("q.lora_A.weight", (2, 2), "float32")}}


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    certs = tmp_path / "certs"
    make_all(certs, ["alice", "bob"], ["localhost", "127.0.0.1"])
    return certs


@pytest.fixture
def coordinator(pki: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    tls = ServerTlsConfig(cert=pki / "coordinator.pem", key=pki / "coordinator.key", client_ca=pki / "ca.pem")
    coord = Coordinator(
        CoordinatorConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state", tls=tls, run=RunConfig(min_workers=2))
    )
    coord.start()
    yield coord
    coord.stop(grace=0.2)


def stub_for(coord: Coordinator, ca: Path, cert: Path | None, key: Path | None) -> tuple[grpc.Channel, pb_grpc.FederationStub]:
    channel = secure_channel(f"127.0.0.1:{coord.port}", ClientTlsConfig(ca=ca, cert=cert, key=key), False, CHANNEL_OPTIONS)
    return channel, pb_grpc.FederationStub(channel)


def join(stub: pb_grpc.FederationStub, worker: str) -> pb.JoinResponse:
    return stub.Join(serde.join_to_proto(JoinRequest(worker, "fp", 5, SCHEMA)), timeout=10)


def test_worker_acts_as_its_certificate(coordinator, pki: Path) -> None:  # type: ignore[no-untyped-def]
    channel, stub = stub_for(coordinator, pki / "ca.pem", pki / "alice.pem", pki / "alice.key")
    assert join(stub, "alice").run.strategy == "fedit"
    with pytest.raises(grpc.RpcError) as info:
        join(stub, "bob")  # alice's certificate claiming to be bob
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "cannot act as worker 'bob'" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.GetTask(pb.GetTaskRequest(worker_id="bob", wait_seconds=0), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "bob" not in coordinator.engine.workers
    channel.close()


def test_no_client_certificate_is_rejected(coordinator, pki: Path) -> None:  # type: ignore[no-untyped-def]
    channel, stub = stub_for(coordinator, pki / "ca.pem", None, None)
    with pytest.raises(grpc.RpcError) as info:
        join(stub, "alice")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    channel.close()


def test_certificate_from_another_ca_is_rejected(coordinator, pki: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rogue = tmp_path / "rogue"
    make_all(rogue, ["alice"], ["localhost"])
    channel, stub = stub_for(coordinator, pki / "ca.pem", rogue / "alice.pem", rogue / "alice.key")
    with pytest.raises(grpc.RpcError) as info:
        join(stub, "alice")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "alice" not in coordinator.engine.workers
    channel.close()


def test_expired_certificate_is_rejected(coordinator, pki: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_cert = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    write_pair(tmp_path, "old", issue((ca_cert, ca_key), "alice", not_before=past, not_after=past + dt.timedelta(days=1)))  # type: ignore[arg-type]
    channel, stub = stub_for(coordinator, pki / "ca.pem", tmp_path / "old.pem", tmp_path / "old.key")
    with pytest.raises(grpc.RpcError) as info:
        join(stub, "alice")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_plaintext_must_be_explicit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="insecure: true"):
        Coordinator(CoordinatorConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "s"))
    with pytest.raises(ConfigError, match="insecure: true"):
        secure_channel("127.0.0.1:1", None, False, CHANNEL_OPTIONS)


def test_make_ca_is_a_ca() -> None:
    from cryptography import x509

    cert, _ = make_ca()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_dashboard_serves_https_for_the_admin(pki: Path, tmp_path: Path) -> None:
    """dashboard_tls: HTTPS with the coordinator's certificate (verified against the run's CA);
    the admin token still required."""
    import ssl
    import urllib.error
    import urllib.request

    tls = ServerTlsConfig(cert=pki / "coordinator.pem", key=pki / "coordinator.key", client_ca=pki / "ca.pem")
    cfg = CoordinatorConfig(
        host="127.0.0.1", port=0, state_dir=tmp_path / "state", tls=tls, admin_token="adm", dashboard_port=0, dashboard_tls=True
    )
    coord = Coordinator(cfg)
    coord.start()
    try:
        assert coord.dashboard is not None and coord.dashboard.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        url = f"https://localhost:{coord.dashboard.port}/api/status"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10, context=ctx)  # noqa: S310 - local test server
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": "Bearer adm"})
        with urllib.request.urlopen(request, timeout=10, context=ctx) as resp:  # noqa: S310
            assert resp.status == 200
        with pytest.raises(OSError):  # plaintext HTTP is not served (URLError, or the TLS server hangs up)
            urllib.request.urlopen(f"http://localhost:{coord.dashboard.port}/healthz", timeout=10)  # noqa: S310
    finally:
        coord.stop(grace=0.2)


def test_dashboard_needs_the_admin_token(tmp_path: Path) -> None:
    cfg = CoordinatorConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state", insecure=True, dashboard_port=0)
    with pytest.raises(ConfigError, match="needs admin_token"):
        Coordinator(cfg)
    with pytest.raises(ConfigError, match="dashboard_tls"):
        from common.config import load_config

        load_config(CoordinatorConfig, None, overrides={"insecure": True, "dashboard_port": 0, "dashboard_tls": True})
