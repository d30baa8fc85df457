"""Flower 1.39 on the same payload for bench/transfer.py, in its own virtualenv.

A SuperLink and 2 SuperNodes (insecure, loopback), and the app in bench/flower_echo: its
ServerApp sends the payload to both nodes and times send_and_receive; its ClientApp echoes.
The virtualenv lives in ~/.cache/fedtree/flwr-venv (FEDTREE_FLWR_VENV overrides) and is created
on demand with `python -m venv` + `pip install flwr==1.39.0`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

FLWR_VERSION = "1.39.0"
APP = Path(__file__).resolve().parent / "flower_echo"
VENV = Path(os.environ.get("FEDTREE_FLWR_VENV", Path.home() / ".cache" / "fedtree" / "flwr-venv"))


def venv_bin() -> Path:
    return VENV / "bin"


def ensure_venv(create: bool) -> str | None:
    """None when Flower is usable, else why not (after trying to create it if `create`)."""
    if (venv_bin() / "flwr").exists():
        return None
    if not create:
        return f"no Flower virtualenv at {VENV} (run without --quick once to create it)"
    print(f"creating Flower {FLWR_VERSION} virtualenv in {VENV} ...", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=300)
        subprocess.run(
            [str(venv_bin() / "pip"), "install", "-q", f"flwr=={FLWR_VERSION}"], check=True, capture_output=True, timeout=900
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return f"cannot create the Flower virtualenv in {VENV}: {exc} {detail.decode(errors='replace')[-500:]}"
    return None if (venv_bin() / "flwr").exists() else f"flwr not installed in {VENV}"


def bf16_verdict() -> str:
    """Try to put a bf16 tensor into a Flower Array, both ways Flower offers; return what happened."""
    import torch

    try:
        torch.zeros(2, dtype=torch.bfloat16).numpy()  # what Array.from_torch_tensor does first
        torch_way = "converted"
    except TypeError as exc:
        torch_way = f"TypeError: {exc}"
    probe = "import numpy as np\nfrom flwr.app import Array\nArray(np.zeros(2, dtype='bfloat16'))\n"
    done = subprocess.run([str(venv_bin() / "python"), "-c", probe], capture_output=True, text=True, timeout=120)
    numpy_way = "accepted" if done.returncode == 0 else done.stderr.strip().splitlines()[-1]
    return f"Array(torch bf16 tensor) -> {torch_way}; Array(numpy 'bfloat16') -> {numpy_way}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FlowerCluster:
    """A SuperLink + N SuperNodes on loopback; `run()` submits the echo app and reads its timings."""

    def __init__(self, workdir: Path, nodes: int = 2) -> None:
        self.workdir = workdir
        self.nodes = nodes
        self.env = {**os.environ, "FLWR_HOME": str(workdir / "home"), "PATH": f"{venv_bin()}:{os.environ['PATH']}"}
        self.env.pop("PYTHONPATH", None)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.fleet, self.control = _free_port(), _free_port()

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.procs.append(
            subprocess.Popen(
                [str(venv_bin() / args[0]), *args[1:]],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stop() ends it with every helper it spawned
            )
        )

    def start(self) -> None:
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n[superlink.local]\naddress = "127.0.0.1:{self.control}"\ninsecure = true\n'
        )
        self._spawn(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--disable-runtime-dependency-installation",
            "--fleet-api-address",
            f"127.0.0.1:{self.fleet}",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.control),
        )
        _wait_port(self.control, 60)
        _wait_port(self.fleet, 60)
        for i in range(self.nodes):
            self._spawn(
                f"supernode{i}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.fleet}",
                "--port",
                str(_free_port()),
            )

    def run(self, payload_mib: int, repeats: int, timeout_s: float = 900) -> list[dict[str, float]]:
        """Submit one run; return its rounds (round 0 = 1 KiB warm-up), each {seconds, bytes, ok}."""
        out = self.workdir / f"out-{payload_mib}-{time.monotonic_ns()}.jsonl"
        overrides = f'out="{out}" payload-mb={payload_mib} repeats={repeats} nodes={self.nodes}'
        submit = subprocess.run(
            [str(venv_bin() / "flwr"), "run", str(APP), "local", "--run-config", overrides],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if submit.returncode != 0:
            raise RuntimeError(f"flwr run failed: {submit.stdout[-1000:]} {submit.stderr[-1000:]}")
        deadline = time.monotonic() + timeout_s
        rows: list[dict[str, float]] = []
        while len(rows) < repeats + 1:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Flower run of {payload_mib} MiB: {len(rows)} of {repeats + 1} rounds after {timeout_s:.0f} s"
                )
            time.sleep(0.5)
            if out.exists():
                rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        time.sleep(2)  # let the ServerApp process exit before the next run is submitted
        return rows

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


@contextlib.contextmanager
def flower_cluster(nodes: int = 2) -> Iterator[FlowerCluster]:
    with tempfile.TemporaryDirectory(prefix="fedtree-flwr-") as tmp:
        cluster = FlowerCluster(Path(tmp), nodes)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
