"""Assemble the coordinator: state store + engine + gRPC server (+ health, reflection, ticker)."""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.config import CoordinatorConfig
from common.errors import ConfigError
from common.grpc_options import SERVER_OPTIONS
from common.tls import server_credentials
from coordinator.admin import AdminView
from coordinator.admin_servicer import AdminServicer
from coordinator.auth import TokenAuth
from coordinator.engine import RoundEngine
from coordinator.health import HealthServicer
from coordinator.limits import TransferLimit
from coordinator.servicer import FederationServicer, add_federation_servicer
from coordinator.state import StateStore
from coordinator.strategies import STRATEGIES
from proto.fedtree.v1 import admin_pb2, admin_pb2_grpc, federation_pb2

if TYPE_CHECKING:
    from coordinator.dashboard import DashboardServer

log = logging.getLogger(__name__)
FEDERATION_SERVICE = federation_pb2.DESCRIPTOR.services_by_name["Federation"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
CHECKPOINT_STOP_S = 120.0  # how long stop() lets a pending round checkpoint finish


class Coordinator:
    """A running coordinator. `start()` binds and serves; `stop()` drains gracefully."""

    def __init__(self, config: CoordinatorConfig) -> None:
        if config.run.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy '{config.run.strategy}'; choose one of {sorted(STRATEGIES)}")
        if config.dashboard_port is not None and not config.admin_token:
            # it shows what the Admin API shows (every site's id, address, accuracy): to the admin only
            raise ConfigError("the dashboard (dashboard_port) needs admin_token: log in with it, or drop dashboard_port")
        self.config = config
        self.store = StateStore(config.state_dir)
        # a closed round's checkpoint is written after the closing push is acknowledged (before the next round opens)
        self.engine = RoundEngine(config, self.store, background_checkpoints=True)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.server_threads, thread_name_prefix="grpc"),
            options=SERVER_OPTIONS,
            interceptors=[
                TokenAuth(config.worker_token, config.admin_token),
                TransferLimit(config.max_concurrent_pushes, config.max_concurrent_pulls),
            ],
        )
        add_federation_servicer(  # the generated registration, with faster bulk transfers (coordinator/servicer.py)
            FederationServicer(
                self.engine,
                config.max_blob_bytes,
                require_identity=bool(config.tls and config.tls.client_ca),
                download_cache_bytes=config.download_cache_bytes,
            ),
            self.server,
        )
        self.admin = AdminView(self.engine)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self.admin), self.server)
        self.health = HealthServicer()  # Check, Watch and List (coordinator/health.py)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                FEDERATION_SERVICE,
                ADMIN_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        address = f"{config.host}:{config.port}"
        creds = server_credentials(config.tls, config.insecure)
        self.port = self.server.add_secure_port(address, creds) if creds else self.server.add_insecure_port(address)
        if self.port == 0:
            raise ConfigError(f"cannot bind {config.host}:{config.port}")
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="round-ticker", daemon=True)
        self.dashboard: DashboardServer | None = None

    def start(self) -> int:
        self.engine.resume()  # the serving process, and only it, takes the state directory over
        self.server.start()
        self._ticker.start()
        for service in ("", FEDERATION_SERVICE, ADMIN_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "[Coordinator] serving on %s:%d, run %s, strategy %s, state %s",
            self.config.host,
            self.port,
            self.engine.run_id,
            self.config.run.strategy,
            self.config.state_dir,
        )
        cfg = self.config
        if cfg.dashboard_port is not None:
            from coordinator.dashboard import start_dashboard  # starlette/uvicorn only when the dashboard is on
            from coordinator.dashboard_auth import DashboardAuth

            tls = (cfg.tls.cert, cfg.tls.key) if cfg.dashboard_tls and cfg.tls is not None else None
            auth = DashboardAuth(cfg.admin_token or "", cfg.worker_token, https=tls is not None)
            self.dashboard = start_dashboard(self.admin, cfg.dashboard_host, cfg.dashboard_port, auth, tls)
            log.info("[Coordinator] dashboard at %s", self.dashboard.url)
        return self.port

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.engine.tick()
            except Exception:  # noqa: BLE001 - keep ticking; the error is logged
                log.exception("[Coordinator] tick failed")

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self._stop.set()
        if self.dashboard is not None:
            self.dashboard.stop()
        self.server.stop(grace).wait()
        if not self.engine.checkpointer.stop(timeout=CHECKPOINT_STOP_S):
            log.error("[Coordinator] stopping with the checkpoint of round %s not on disk", self.engine.checkpointer.pending)
        self.store.close()
        log.info("[Coordinator] stopped")
