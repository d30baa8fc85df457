"""The web dashboard of a live coordinator: JSON API, /metrics, and the page in headless Chromium."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_federation import TRAIN, _run_all, _worker
from testdata import write_client_data

from common.config import CoordinatorConfig, RunConfig
from common.exit_codes import ExitCode
from coordinator.metrics import PUSH_LATENCY
from coordinator.server import Coordinator

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WORKERS = {"w0": ("sports", "tech"), "w1": ("sports", "tech"), "w2": ("food", "tech")}
ROUNDS = 3


ADMIN, WORKER = "adm", "wrk"
PROTECTED = ("/", "/metrics", "/api/tree", "/api/workers", "/api/status", "/api/rounds")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _request(base: str, path: str, token: str | None = None, **kwargs: Any) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) without following redirects; `token` as Authorization: Bearer."""
    req = urllib.request.Request(base + path, **kwargs)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


def _get(base: str, path: str, token: str | None = ADMIN) -> tuple[int, str, str]:
    status, headers, body = _request(base, path, token)
    return status, headers.get("content-type", ""), body


def _json(base: str, path: str) -> Any:
    status, ctype, body = _get(base, path)
    assert status == 200 and ctype.startswith("application/json"), (path, status, ctype)
    return json.loads(body)


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, str]]:
    """A FedTreeLoRA run (1 warmup round, 3 rounds, 3 workers) with the dashboard on port 0, run to completion."""
    tmp = tmp_path_factory.mktemp("dashboard")
    run = RunConfig(
        strategy="fedtree",
        rounds=ROUNDS,
        min_workers=len(WORKERS),
        round_deadline_s=60,
        train=TRAIN,  # type: ignore[arg-type]
        fedtree={"warmup_rounds": 1, "tau": -1.0},  # type: ignore[arg-type]
    )
    cfg = CoordinatorConfig(
        host="127.0.0.1",
        port=0,
        state_dir=tmp / "state",
        dashboard_port=0,
        admin_token=ADMIN,
        worker_token=WORKER,
        run=run,
        long_poll_s=1.0,
        insecure=True,  # loopback test
    )
    PUSH_LATENCY.reset()  # process-wide recorder: count only this run's pushes
    coord = Coordinator(cfg)
    coord.start()
    try:
        assert coord.dashboard is not None and coord.dashboard.port > 0
        base = f"http://127.0.0.1:{coord.dashboard.port}"
        # Before any worker joins: serving, tree not built.
        assert _json(base, "/healthz") == {"status": "ok"}
        assert not _json(base, "/api/tree").get("built", False)
        workers = [
            _worker(coord, tiny_model_dir, write_client_data(tmp / "data" / w, labels, seed=i), tmp / f"out-{w}", w, WORKER)
            for i, (w, labels) in enumerate(WORKERS.items())
        ]
        assert _run_all(workers) == [ExitCode.OK] * len(WORKERS)
        assert coord.engine.done and coord.engine.last_closed == ROUNDS
        yield coord, base
    finally:
        coord.stop(grace=0.5)


def test_json_api_and_metrics(finished_run: tuple[Coordinator, str]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    coord, base = finished_run
    status, ctype, body = _get(base, "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, ctype, page = _get(base, "/")
    assert status == 200 and ctype.startswith("text/html") and "<svg" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", ""), "the page must not load external assets"

    tree = _json(base, "/api/tree")
    assert tree["built"] and tree["strategy"] == "fedtree"
    assert sorted(tree["leaves"]) == sorted(WORKERS) and len(tree["merges"]) == len(WORKERS) - 1
    assert tree["layers"], "no layer cuts"
    for cut in tree["layers"]:
        members = [w for cluster in cut["clusters"] for w in cluster["workers"]]
        assert sorted(members) == sorted(WORKERS), cut
        assert cut["clusterCount"] == len(cut["clusters"])

    status_json = _json(base, "/api/status")
    assert status_json["phase"] == "PHASE_DONE" and status_json["lastClosedRound"] == ROUNDS
    assert status_json["runId"] == coord.engine.run_id and status_json["workers"] == len(WORKERS)

    workers = _json(base, "/api/workers")["workers"]
    assert sorted(w["workerId"] for w in workers) == sorted(WORKERS)
    assert all(int(w["bytesReceived"]) > 0 and int(w["bytesSent"]) > 0 for w in workers)  # uint64 -> JSON strings

    rounds = _json(base, "/api/rounds")["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    for r in rounds:
        assert sorted(r["accuracy"]) == sorted(WORKERS) and 0.0 <= r["meanMetrics"]["accuracy"] <= 1.0

    status, ctype, text = _get(base, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(text) for s in fam.samples
    }
    assert samples[("fedtree_rounds_closed_total", ())] == ROUNDS
    assert samples[("fedtree_current_round", ())] == ROUNDS
    states = {"joined", "pulling", "evaluating", "training", "pushing", "idle", "lost", "evicted"}
    assert {dict(labels)["state"] for (name, labels) in samples if name == "fedtree_workers"} == states
    assert sum(v for (name, _), v in samples.items() if name == "fedtree_workers") == len(WORKERS)
    assert samples[("fedtree_bytes_received_total", ())] == sum(int(w["bytesReceived"]) for w in workers)
    assert samples[("fedtree_bytes_sent_total", ())] == sum(int(w["bytesSent"]) for w in workers)
    for w, acc in rounds[-1]["accuracy"].items():
        assert samples[("fedtree_worker_accuracy", (("worker", w),))] == pytest.approx(acc)
    assert samples[("fedtree_mean_accuracy", ())] == pytest.approx(rounds[-1]["meanMetrics"]["accuracy"])
    assert samples[("fedtree_push_seconds_count", ())] >= len(WORKERS) * ROUNDS
    assert samples[("fedtree_push_seconds_bucket", (("le", "+Inf"),))] == samples[("fedtree_push_seconds_count", ())]
    assert samples[("fedtree_push_seconds_sum", ())] > 0


def test_json_api_is_message_to_json_of_the_admin_rpcs(finished_run: tuple[Coordinator, str]) -> None:
    import grpc
    from google.protobuf.json_format import MessageToJson

    from coordinator.auth import bearer
    from proto.fedtree.v1 import admin_pb2 as apb
    from proto.fedtree.v1 import admin_pb2_grpc as apb_grpc

    coord, base = finished_run
    with grpc.insecure_channel(f"127.0.0.1:{coord.port}") as channel:
        stub, md = apb_grpc.AdminStub(channel), bearer(ADMIN)
        calls = {
            "/api/tree": lambda: stub.GetTree(apb.GetTreeRequest(), metadata=md, timeout=10),
            "/api/workers": lambda: stub.ListWorkers(apb.ListWorkersRequest(), metadata=md, timeout=10),
            "/api/status": lambda: stub.GetStatus(apb.GetStatusRequest(), metadata=md, timeout=10),
            "/api/rounds": lambda: stub.GetRounds(apb.GetRoundsRequest(), metadata=md, timeout=10),
        }
        for path, call in calls.items():
            assert _json(base, path) == json.loads(MessageToJson(call())), path


@pytest.mark.parametrize("path", PROTECTED)
def test_every_endpoint_is_for_the_admin_only(finished_run: tuple[Coordinator, str], path: str) -> None:
    """No credential and a wrong one: 401 (the page sends a browser to the login form); the worker
    token: 403, as on the Admin gRPC API; the admin token: 200. /healthz stays open."""
    _, base = finished_run
    status, headers, _ = _request(base, path)
    if path == "/":
        assert status == 303 and headers["location"] == "/login"
    else:
        assert status == 401 and headers.get("www-authenticate") == "Bearer"
    assert _request(base, path, "nope")[0] == (303 if path == "/" else 401)
    assert _request(base, path, WORKER)[0] == 403
    assert _request(base, path, ADMIN)[0] == 200
    assert _request(base, "/healthz")[0] == 200


def test_login_sets_a_secure_session_cookie(finished_run: tuple[Coordinator, str]) -> None:
    _, base = finished_run
    status, headers, _ = _request(base, "/login", data=b"token=wrong", method="POST")
    assert status == 303 and headers["location"] == "/login?failed" and "set-cookie" not in headers
    status, headers, _ = _request(base, "/login", data=b"token=" + ADMIN.encode(), method="POST")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie, cookie
    session = cookie.split(";", 1)[0]
    for path in PROTECTED:
        assert _request(base, path, headers={"Cookie": session})[0] == 200, path
    status, headers, _ = _request(base, "/logout", method="POST", headers={"Cookie": session})
    assert status == 303
    assert _request(base, "/api/status", headers={"Cookie": session})[0] == 401  # the session ended


@pytest.mark.browser
def test_page_renders_in_chromium(finished_run: tuple[Coordinator, str]) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install the Debian package `chromium` (make install-system)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the `playwright` Python package is missing (pip install -e '.[dev]')"
    )
    _, base = finished_run
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(base + "/")  # sent to the login form first
            page.wait_for_url("**/login", timeout=15_000)
            page.fill("#token", ADMIN)
            page.click("button[type=submit]")
            page.wait_for_url(base + "/", timeout=15_000)
            page.wait_for_function("document.querySelectorAll('#tree .leaf').length === 3", timeout=15_000)
            page.wait_for_function("document.querySelectorAll('#acc path.mean-line').length === 1", timeout=15_000)
            leaves = page.eval_on_selector_all("#tree .leaf", "els => els.map(e => e.dataset.worker)")
            assert sorted(leaves) == sorted(WORKERS)
            cuts = page.eval_on_selector_all("#tree line.cut", "els => els.map(e => +e.dataset.layer)")
            assert sorted(cuts) == list(range(len(cuts))) and cuts, "one dashed cut line per layer"
            assert page.locator("#tree .cut-label").count() >= 1
            assert "tree not built" not in (page.locator("#tree").text_content() or "")
            assert page.locator("#workers tbody tr.worker").count() == len(WORKERS)
            assert page.locator("#layers tbody tr").count() == len(cuts)
            assert page.locator("#acc path.worker-line").count() == len(WORKERS)
            assert page.locator("#h-phase").inner_text().strip() == "done"
            assert page.locator("#h-round").inner_text().strip() == f"{ROUNDS} / {ROUNDS}"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    shutil.copy(shot, "/tmp/dashboard.png")
    assert not errors, errors
