"""Entry points fail fast on bad configuration, naming the bad key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


def test_coordinator_unknown_config_key_names_it(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: 0\nrun:\n  rounds: 2\n  lora:\n    rnak: 4\n")
    proc = _run("coordinator", "--config", str(cfg), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 2
    assert "unknown config key 'run.lora.rnak'" in proc.stderr


def test_coordinator_unknown_strategy_fails_at_start(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: 0\nrun:\n  strategy: fedavgx\n")
    proc = _run("coordinator", "--config", str(cfg), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 2 and "unknown strategy 'fedavgx'" in proc.stderr


def test_worker_unknown_env_key_names_it(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "FEDTREE_WORKER__DATA__TEXT_COLUMN": "body"}
    proc = _run("worker", "--data-dir", str(tmp_path), env=env)
    assert proc.returncode == 2 and "unknown config key 'data.text_column'" in proc.stderr


def test_worker_missing_data_fails_clearly(tmp_path: Path) -> None:
    proc = _run("worker", "--data-dir", str(tmp_path / "nowhere"), "--coordinator", "127.0.0.1:1")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_unreachable_worker_says_why_and_stops_on_sigterm(tmp_path: Path) -> None:
    """A worker whose coordinator refuses connections names the cause once (not DEADLINE_EXCEEDED),
    and SIGTERM ends its retrying within 2 s with the signal exit code (it used to retry on for
    connect_timeout_s)."""
    import os
    import signal
    import socket
    import time

    from testdata import write_client_data

    from common.exit_codes import ExitCode

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = write_client_data(tmp_path / "data", ("sports", "tech"))
    log = tmp_path / "worker.log"
    env = {**os.environ, "FEDTREE_WORKER__INSECURE": "true", "FEDTREE_WORKER__CONNECT_TIMEOUT_S": "600"}
    cmd = [sys.executable, "-m", "worker", "--data-dir", str(data), "--coordinator", f"127.0.0.1:{port}", "--worker-id", "w"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 90
            while "connection refused by" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
            time.sleep(1.0)  # well inside a retry wait
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            while "stopped (signal)" not in log.read_text() and time.monotonic() - sent < 10:
                time.sleep(0.05)
            took = time.monotonic() - sent  # the retry loop has ended; the interpreter then exits
            code = proc.wait(timeout=20)
        finally:
            proc.kill()
    text = log.read_text()
    assert f"connection refused by 127.0.0.1:{port}" in text and "DEADLINE_EXCEEDED" not in text, text
    assert text.count("connection refused by") == 1, text  # once, not on every retry
    assert code == ExitCode.SIGNAL and took < 2.0, (code, took, text)
