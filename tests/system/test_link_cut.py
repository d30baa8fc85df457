"""System test: a worker's link is cut (silently: every packet dropped) for longer than a round's
deadline. The rounds go on without it, closing at their deadline; when the link returns the worker
catches up by itself and pushes again in a later round. Coordinator and 3 workers on separate
network namespaces, the tiny BERT, FedIT."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import netns
import pytest
import yaml
from testdata import write_client_data

from coordinator.state import StateStore

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("w0", "w1", "w2")
CUT = "w2"
ROUNDS = 6
DEADLINE_S = 8.0
CUT_S = 12.0  # longer than a deadline
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _closed(state: Path) -> list[dict]:  # type: ignore[type-arg]
    if not (state / "state.db").exists():
        return []
    store = StateStore(state)
    try:
        return [r for r in store.rounds() if r["closed_at"]]
    finally:
        store.close()


@pytest.mark.system
@pytest.mark.netns
@pytest.mark.timeout(300)
def test_cut_link_round_goes_on_and_worker_catches_up(
    hosts: Callable[..., dict[str, netns.Host]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    net = hosts("coord", *WORKERS)
    state = tmp_path / "state"
    logs: dict[str, Path] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(host: netns.Host, name: str, config: dict, module: str, *extra: str) -> subprocess.Popen[bytes]:  # type: ignore[type-arg]
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "wb") as out:
            cmd = [sys.executable, "-m", module, "--config", str(tmp_path / f"{name}.yaml"), *extra]
            return host.run(cmd, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)

    def dump() -> str:
        return "\n".join(f"----- {n}\n{p.read_text(errors='replace')[-4000:]}" for n, p in logs.items() if p.exists())

    coord_cfg = {
        "host": "0.0.0.0",
        "port": 0,
        "insecure": True,
        "state_dir": str(state),
        "long_poll_s": 2.0,
        "linger_s": 5.0,
        "run": {
            "strategy": "fedit",
            "rounds": ROUNDS,
            "min_workers": 3,
            "round_deadline_s": DEADLINE_S,
            "train": {"local_steps": 2, "batch_size": 8, "max_seq_length": 16},
        },
    }
    port_file = tmp_path / "port"
    procs["coordinator"] = start(net["coord"], "coordinator", coord_cfg, "coordinator", "--port-file", str(port_file))
    deadline = time.monotonic() + 120
    while not port_file.exists():
        assert procs["coordinator"].poll() is None and time.monotonic() < deadline, dump()
        time.sleep(0.2)
    port = int(port_file.read_text())
    for i, wid in enumerate(WORKERS):
        data = write_client_data(tmp_path / "data" / wid, ("sports", "tech"), seed=i)
        cfg = {
            "worker_id": wid,
            "coordinator": f"{net['coord'].addr}:{port}",
            "model_path": str(tiny_model_dir),
            "insecure": True,
            "data": {"dir": str(data)},
            "output_dir": str(tmp_path / "out" / wid),
            "num_threads": 1,
            "progress": False,
            "connect_timeout_s": 120,
            "heartbeat_s": 2,
        }
        procs[wid] = start(net[wid], wid, cfg, "worker")

    # cut w2 off as soon as round 1 has closed, for longer than a round's deadline
    while not _closed(state):
        assert all(p.poll() is None for p in procs.values()) and time.monotonic() < deadline + 120, dump()
        time.sleep(0.1)
    netns.partition(net[CUT])
    cut_at = time.time()
    time.sleep(CUT_S)
    during = _closed(state)
    netns.heal(net[CUT])
    healed_at = time.time()

    end = time.monotonic() + 200
    while any(p.poll() is None for p in procs.values()):
        assert time.monotonic() < end, dump()
        time.sleep(0.5)
    codes = {n: p.returncode for n, p in procs.items()}
    assert codes == dict.fromkeys(procs, 0), (codes, dump())

    store = StateStore(state)
    try:
        rounds = store.rounds()
        pushes = {r["round"]: sorted(store.pushes(r["round"])) for r in rounds}
    finally:
        store.close()
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1)), rounds
    # while the link was down: at least one round closed without w2, at its deadline, with the others' pushes
    missed = [r for r in during if r["started_at"] >= cut_at - 1 and CUT not in pushes[r["round"]]]
    assert missed, (during, pushes, dump())
    for r in missed:
        assert pushes[r["round"]] == ["w0", "w1"], pushes
        assert r["closed_at"] - r["started_at"] < DEADLINE_S + 3, r
    # after the link came back: w2 pushed again, and its pushes and evaluations reached the coordinator
    caught_up = [r for r in rounds if r["started_at"] >= healed_at - DEADLINE_S and CUT in pushes[r["round"]]]
    assert caught_up, (rounds, pushes, dump())
    assert all(len(p) == len(set(p)) for p in pushes.values())  # nothing counted twice
