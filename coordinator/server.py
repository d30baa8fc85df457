"""Assemble the coordinator: state store + engine + gRPC server (+ health, reflection, ticker)."""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.config import CoordinatorConfig
from common.errors import ConfigError
from common.grpc_options import SERVER_OPTIONS
from coordinator.engine import RoundEngine
from coordinator.servicer import FederationServicer
from coordinator.state import StateStore
from coordinator.strategies import STRATEGIES
from proto.fedtree.v1 import federation_pb2, federation_pb2_grpc

log = logging.getLogger(__name__)
FEDERATION_SERVICE = federation_pb2.DESCRIPTOR.services_by_name["Federation"].full_name


class Coordinator:
    """A running coordinator. `start()` binds and serves; `stop()` drains gracefully."""

    def __init__(self, config: CoordinatorConfig, max_workers: int = 64) -> None:
        if config.run.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy '{config.run.strategy}'; choose one of {sorted(STRATEGIES)}")
        self.config = config
        self.store = StateStore(config.state_dir)
        self.engine = RoundEngine(config, self.store)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=SERVER_OPTIONS)
        federation_pb2_grpc.add_FederationServicer_to_server(FederationServicer(self.engine, config.max_blob_bytes), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (FEDERATION_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = self.server.add_insecure_port(f"{config.host}:{config.port}")
        if self.port == 0:
            raise ConfigError(f"cannot bind {config.host}:{config.port}")
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="round-ticker", daemon=True)

    def start(self) -> int:
        self.server.start()
        self._ticker.start()
        for service in ("", FEDERATION_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "[Coordinator] serving on %s:%d, run %s, strategy %s, state %s",
            self.config.host,
            self.port,
            self.engine.run_id,
            self.config.run.strategy,
            self.config.state_dir,
        )
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
        self.server.stop(grace).wait()
        self.store.close()
        log.info("[Coordinator] stopped")
