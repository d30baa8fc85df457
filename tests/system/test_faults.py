"""Fault injection with real processes (tiny model): SIGKILL the coordinator or a worker mid-round,
restart it, and check that the run completes with nothing lost or counted twice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from testdata import write_client_data

from coordinator.state import StateStore

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("k0", "k1", "k2")
ROUNDS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Federation:
    def __init__(self, tmp: Path, model_dir: Path) -> None:
        self.tmp, self.port = tmp, free_port()
        self.state = tmp / "state"
        cfg = {
            "host": "127.0.0.1",
            "port": self.port,
            "insecure": True,
            "state_dir": str(self.state),
            "linger_s": 5,
            "long_poll_s": 1.0,
            "run": {
                "strategy": "fedit",
                "rounds": ROUNDS,
                "min_workers": 3,
                "round_deadline_s": 120,
                "train": {"local_steps": 40, "batch_size": 8, "max_seq_length": 16},
            },
        }
        (tmp / "coordinator.yaml").write_text(yaml.safe_dump(cfg))
        for i, w in enumerate(WORKERS):
            data = write_client_data(tmp / "data" / w, ("sports", "tech"), seed=i)
            (tmp / f"{w}.yaml").write_text(
                yaml.safe_dump(
                    {
                        "worker_id": w,
                        "coordinator": f"127.0.0.1:{self.port}",
                        "model_path": str(model_dir),
                        "insecure": True,
                        "data": {"dir": str(data)},
                        "output_dir": str(tmp / "out" / w),
                        "progress": False,
                        "connect_timeout_s": 120,
                        "heartbeat_s": 1.0,
                    }
                )
            )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "FEDTREE_WORKER__NUM_THREADS": "1"}

    def start(self, name: str) -> None:
        args = (
            ["coordinator", "--config", str(self.tmp / "coordinator.yaml")]
            if name == "coordinator"
            else ["worker", "--config", str(self.tmp / f"{name}.yaml")]
        )
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=log, stderr=log, env=self.env)

    def start_all(self) -> None:
        for name in ("coordinator", *WORKERS):
            self.start(name)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def closed_rounds(self) -> int:
        if not (self.state / "state.db").exists():
            return 0
        store = StateStore(self.state)
        try:
            return store.last_closed_round()
        finally:
            store.close()

    def wait_until(self, predicate, timeout: float = 240) -> None:  # type: ignore[no-untyped-def]
        end = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < end, self.logs()
            time.sleep(0.05)

    def wait_all(self, timeout: float = 240) -> dict[str, int]:
        end = time.monotonic() + timeout
        codes = {}
        for name, proc in self.procs.items():
            codes[name] = proc.wait(max(1.0, end - time.monotonic()))
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.tmp.glob("*.log")))

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()


@pytest.fixture
def federation(tmp_path: Path, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    fed = Federation(tmp_path, tiny_model_dir)
    yield fed
    fed.close()


def check_complete(fed: Federation) -> None:
    store = StateStore(fed.state)
    rounds = store.rounds()
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1)), fed.logs()
    assert all(r["pushes"] == len(WORKERS) and sorted(r["participants"]) == list(WORKERS) for r in rounds)
    for r in range(1, ROUNDS + 1):  # one push per worker per round: nothing lost, nothing counted twice
        assert sorted(store.pushes(r)) == list(WORKERS)
    assert sorted(store.evaluations()[ROUNDS]) == list(WORKERS)
    store.close()


@pytest.mark.system
def test_coordinator_sigkill_mid_round_resumes(federation: Federation) -> None:
    fed = federation
    fed.start_all()
    fed.wait_until(lambda: fed.closed_rounds() >= 1)
    fed.kill("coordinator")  # round 2 is open: pushes may have been acknowledged
    time.sleep(1.0)
    fed.start("coordinator")  # same state dir, same port
    codes = fed.wait_all()
    assert set(codes.values()) == {0}, (codes, fed.logs())
    check_complete(fed)
    log = (fed.tmp / "coordinator.log").read_text()
    assert "resumed run" in log and ("after round 1" in log or "after round 2" in log), log[-3000:]


@pytest.mark.system
def test_worker_sigkill_rejoins_and_resumes(federation: Federation) -> None:
    fed = federation
    fed.start_all()
    fed.wait_until(lambda: fed.closed_rounds() >= 1)
    fed.kill("k1")  # mid-training (or mid-upload) of round 2
    time.sleep(0.5)
    fed.start("k1")  # same identity, same output dir
    codes = fed.wait_all()
    assert set(codes.values()) == {0}, (codes, fed.logs())
    check_complete(fed)
    assert "resumed local state" in (fed.tmp / "k1.log").read_text()
