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
