"""The coordinator's web dashboard: a Starlette app served by uvicorn in a daemon thread.

`GET /` is a single static page (vanilla JS + inline SVG, no external assets) that polls the
JSON endpoints. `/api/{tree,workers,status,rounds}` are exactly `MessageToJson` of the admin
messages, encoded by common/serde.py as the gRPC Admin API encodes them (so they mirror it field
for field); `/metrics` is Prometheus text.
All of them need the admin credential (coordinator/dashboard_auth.py); only `/healthz` and the
login form are open. With `dashboard_tls` it serves HTTPS with the coordinator's certificate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import uvicorn
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from common import serde
from common.admin_types import WorkerState
from coordinator.admin import AdminView
from coordinator.dashboard_auth import DashboardAuth
from coordinator.metrics import PUSH_LATENCY, PushLatency

log = logging.getLogger(__name__)
PAGE = "static/dashboard.html"


class FedtreeCollector(Collector):
    """Reads the AdminView at scrape time; nothing is cached between scrapes."""

    def __init__(self, view: AdminView, push_latency: PushLatency = PUSH_LATENCY) -> None:
        self.view = view
        self.push_latency = push_latency

    def collect(self) -> Iterator[Metric]:
        status = self.view.status()
        workers = self.view.workers()
        rounds = self.view.rounds()

        yield CounterMetricFamily("fedtree_rounds_closed", "Federated rounds closed so far.", value=status.last_closed_round)
        current = GaugeMetricFamily("fedtree_current_round", "The open round, or the last closed one when no round is open.")
        current.add_metric([], status.current_round or status.last_closed_round)
        yield current
        yield CounterMetricFamily(
            "fedtree_bytes_received",
            "Adapter bytes received from workers (sum over workers).",
            value=sum(w.bytes_received for w in workers),
        )
        yield CounterMetricFamily(
            "fedtree_bytes_sent", "Adapter bytes sent to workers (sum over workers).", value=sum(w.bytes_sent for w in workers)
        )

        by_state = GaugeMetricFamily("fedtree_workers", "Known workers by state.", labels=["state"])
        counts = {state.name.lower(): 0 for state in WorkerState}
        for w in workers:
            counts[w.state.name.lower()] += 1
        for state, n in sorted(counts.items()):
            by_state.add_metric([state], n)
        yield by_state

        latest: dict[str, float] = {}
        mean: float | None = None
        for r in rounds:  # rounds are in order: later rounds overwrite earlier ones
            latest.update(r.accuracy)
            if "accuracy" in r.mean_metrics:
                mean = r.mean_metrics["accuracy"]
        accuracy = GaugeMetricFamily(
            "fedtree_worker_accuracy", "Latest accuracy of each worker after aggregation.", labels=["worker"]
        )
        for worker, value in sorted(latest.items()):
            accuracy.add_metric([worker], value)
        yield accuracy
        if mean is not None:
            yield GaugeMetricFamily("fedtree_mean_accuracy", "Mean accuracy over workers after the latest round.", value=mean)
        # every evaluation metric (accuracy; rouge1/rouge2/rougeL/task_score for generation runs), latest round's mean
        evaluated = [r for r in rounds if r.mean_metrics]
        if evaluated:
            means = GaugeMetricFamily(
                "fedtree_mean_metric", "Mean over workers of each evaluation metric after the latest round.", labels=["metric"]
            )
            for name, value in sorted(evaluated[-1].mean_metrics.items()):
                means.add_metric([name], value)
            yield means

        buckets, total, _count = self.push_latency.snapshot()
        yield HistogramMetricFamily(
            "fedtree_push_seconds",
            "Duration of PushUpdate calls (whole RPC, upload included).",
            buckets=[("+Inf" if b == float("inf") else repr(b), c) for b, c in buckets],
            sum_value=total,
        )


def _json(message: Message) -> Response:
    return Response(MessageToJson(message), media_type="application/json")


def create_app(view: AdminView, auth: DashboardAuth, push_latency: PushLatency = PUSH_LATENCY) -> Starlette:
    """The dashboard ASGI app over one AdminView, with its own Prometheus registry; every route
    but /healthz and /login for the admin only (`auth`)."""
    registry = CollectorRegistry()
    registry.register(FedtreeCollector(view, push_latency))
    page = resources.files("coordinator").joinpath(PAGE).read_text(encoding="utf-8")

    def api(read: Callable[[], Message]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            return _json(read())

        return endpoint

    def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/", auth.guard(index, page=True)),
        Route("/healthz", healthz),
        Route("/login", auth.login_page, methods=["GET"]),
        Route("/login", auth.login, methods=["POST"]),
        Route("/logout", auth.logout, methods=["POST"]),
        Route("/metrics", auth.guard(metrics)),
        Route("/api/tree", auth.guard(api(lambda: serde.tree_to_proto(view.tree())))),
        Route("/api/workers", auth.guard(api(lambda: serde.workers_to_proto(view.workers())))),
        Route("/api/status", auth.guard(api(lambda: serde.status_to_proto(view.status())))),
        Route("/api/rounds", auth.guard(api(lambda: serde.rounds_to_proto(view.rounds())))),
    ]
    # Sync endpoints run in Starlette's thread pool, so a slow engine lock never blocks the loop.
    return Starlette(routes=routes)


class DashboardServer:
    """uvicorn serving the dashboard in a daemon thread; `port` is the bound port."""

    def __init__(self, app: Starlette, host: str, port: int, tls: tuple[Path, Path] | None = None) -> None:
        self.host = host
        self.https = tls is not None
        cert, key = tls if tls is not None else (None, None)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            ssl_certfile=str(cert) if cert else None,
            ssl_keyfile=str(key) if key else None,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dashboard", daemon=True)
        self.port = port

    def start(self, timeout: float = 10.0) -> DashboardServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"dashboard failed to start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dashboard did not start on {self.host}:{self.port} within {timeout}s")
            time.sleep(0.02)
        sockets = [s for server in self.server.servers for s in server.sockets]
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.https else 'http'}://{host}:{self.port}/"

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)


def start_dashboard(
    view: AdminView, host: str, port: int, auth: DashboardAuth, tls: tuple[Path, Path] | None = None
) -> DashboardServer:
    """Serve the dashboard for `view` on host:port (0 picks a free port) in a daemon thread, over
    HTTPS with `tls` = (certificate, key)."""
    return DashboardServer(create_app(view, auth), host, port, tls).start()
