"""System test: the coordinator and 3 workers on separate "hosts" (network namespaces on a bridge),
mutual TLS across the network, one worker behind a degraded link (2 mbit token bucket, 1% inbound
packet drop, and a 50 ms userspace latency proxy that it dials instead of the coordinator).
The tiny 2-layer BERT, strategy fedit, 2 rounds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import netns
import pytest
import yaml
from testdata import write_client_data

from coordinator.certs import make_all
from coordinator.state import StateStore

ROOT = Path(__file__).resolve().parents[2]
PROXY = Path(__file__).resolve().parent / "delay_proxy.py"
WORKERS = ("w0", "w1", "w2")
DEGRADED = "w2"
LABELS = {"w0": ("sports", "tech"), "w1": ("tech", "food"), "w2": ("sports", "food")}
RUN_TIMEOUT_S = float(os.environ.get("FEDTREE_NETNS_TIMEOUT_S", "240"))
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"{proc.args!r} exited with {proc.returncode} before writing {path.name}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {path.name} after {timeout_s:.0f} s")
        time.sleep(0.2)
    return path.read_text().strip()


def _copy(files: list[Path], to: Path) -> Path:
    to.mkdir(parents=True)
    for f in files:
        shutil.copy2(f, to / f.name)
    return to


@pytest.mark.system
@pytest.mark.netns
@pytest.mark.timeout(RUN_TIMEOUT_S + 180)
def test_coordinator_and_three_workers_on_separate_hosts(
    hosts: Callable[..., dict[str, netns.Host]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    net = hosts("coord", *WORKERS)
    coord = net["coord"]
    subnet_prefix = coord.addr.rsplit(".", 1)[0] + "."
    root_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert subnet_prefix not in root_addrs, "the test subnet leaked into the root namespace"

    # certificates: each site gets only its own key pair and the CA
    certs = tmp_path / "certs"
    make_all(certs, list(WORKERS), ["coordinator", coord.addr])
    coord_dir = _copy([certs / "ca.pem", certs / "coordinator.pem", certs / "coordinator.key"], tmp_path / "coord")
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    log_files: dict[str, Path] = {}

    def logs() -> str:
        parts = []
        for name, path in log_files.items():
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"----- {name} ({path}) -----\n{text[-6000:]}")
        return "\n".join(parts)

    def start(host: netns.Host, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log_files[name] = logs_dir / f"{name}.log"
        with open(log_files[name], "wb") as out:
            return host.run(cmd, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        coord_cfg = {
            "host": "0.0.0.0",
            "port": 0,
            "state_dir": str(coord_dir / "state"),
            "long_poll_s": 2.0,
            "linger_s": 5.0,
            "tls": {
                "cert": str(coord_dir / "coordinator.pem"),
                "key": str(coord_dir / "coordinator.key"),
                "client_ca": str(coord_dir / "ca.pem"),
            },
            "run": {
                "strategy": "fedit",
                "rounds": 2,
                "min_workers": 3,
                "round_deadline_s": 600,
                "train": {"local_steps": 2, "batch_size": 8, "max_seq_length": 16},
            },
        }
        (coord_dir / "coord.yaml").write_text(yaml.safe_dump(coord_cfg))
        port_file = coord_dir / "port"
        procs["coordinator"] = start(
            coord,
            "coordinator",
            [sys.executable, "-m", "coordinator", "--config", str(coord_dir / "coord.yaml"), "--port-file", str(port_file)],
        )
        port = int(_wait_file(port_file, procs["coordinator"], 120))

        # the degraded link: w2 sends through a 2 mbit token bucket, drops 1% of what it receives,
        # and dials a 50 ms latency proxy on its own loopback that forwards to the coordinator
        slow = net[DEGRADED]
        netns.rate_limit(slow, rate="2mbit")
        netns.drop(slow, probability=0.01)
        proxy_port_file = tmp_path / "proxy.port"
        procs["proxy"] = start(
            slow,
            "proxy",
            [
                sys.executable,
                str(PROXY),
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                f"{coord.addr}:{port}",
                "--delay",
                "0.05",
                "--port-file",
                str(proxy_port_file),
            ],
        )
        proxy_port = int(_wait_file(proxy_port_file, procs["proxy"], 60))

        for i, wid in enumerate(WORKERS):
            site = _copy([certs / "ca.pem", certs / f"{wid}.pem", certs / f"{wid}.key"], tmp_path / wid)
            data = write_client_data(site / "data", LABELS[wid], seed=i)
            tls = {"ca": str(site / "ca.pem"), "cert": str(site / f"{wid}.pem"), "key": str(site / f"{wid}.key")}
            target = f"{coord.addr}:{port}"
            if wid == DEGRADED:
                target = f"127.0.0.1:{proxy_port}"
                tls["server_name"] = "coordinator"  # the certificate names the coordinator, not the proxy
            cfg = {
                "worker_id": wid,
                "coordinator": target,
                "model_path": str(tiny_model_dir),
                "data": {"dir": str(data)},
                "output_dir": str(site / "out"),
                "tls": tls,
                "num_threads": 1,
                "progress": False,
                "connect_timeout_s": 120,
                "heartbeat_s": 5,
            }
            (site / "worker.yaml").write_text(yaml.safe_dump(cfg))
            procs[wid] = start(net[wid], wid, [sys.executable, "-m", "worker", "--config", str(site / "worker.yaml")])

        # every federation process exits by itself, with 0
        deadline = time.monotonic() + RUN_TIMEOUT_S
        federation = ["coordinator", *WORKERS]
        while any(procs[n].poll() is None for n in federation):
            if time.monotonic() > deadline:
                running = [n for n in federation if procs[n].poll() is None]
                pytest.fail(f"still running after {RUN_TIMEOUT_S:.0f} s: {running}")
            for n in federation:
                code = procs[n].poll()
                if code not in (None, 0):
                    pytest.fail(f"{n} exited with {code}")
            time.sleep(0.5)
        codes = {n: procs[n].returncode for n in federation}
        assert codes == dict.fromkeys(federation, 0), f"{codes}"
        run_s = time.monotonic() - started

        dropped = netns.dropped_packets(slow)
        qdisc = slow.check("tc", "-s", "qdisc", "show", "dev", slow.dev)
        procs["proxy"].terminate()
        assert procs["proxy"].wait(timeout=15) == 0
        proxy_log = log_files["proxy"].read_text()
        assert "delay_proxy: accepted" in proxy_log, f"{DEGRADED} never went through the proxy"
        assert "tbf" in qdisc

        store = StateStore(coord_dir / "state")
        try:
            rounds = store.rounds()
            evals = store.evaluations()
        finally:
            store.close()
        assert [r["round"] for r in rounds] == [1, 2], f"{rounds}"
        assert all(r["closed_at"] for r in rounds)
        assert [r["pushes"] for r in rounds] == [3, 3], f"{rounds}"
        assert all(sorted(r["participants"]) == list(WORKERS) for r in rounds), rounds
        assert sorted(evals) == [1, 2], evals
        for rnd in (1, 2):
            assert sorted(evals[rnd]) == list(WORKERS), evals
        for wid in WORKERS:
            assert (tmp_path / wid / "out" / "adapter" / "adapter_model.safetensors").exists(), wid
        print(
            f"\nseparate hosts: federation done in {run_s:.1f} s; {DEGRADED}: {dropped} packets dropped, "
            f"{proxy_log.strip().splitlines()[-1]}"
        )
    except BaseException:
        print(logs())
        raise
