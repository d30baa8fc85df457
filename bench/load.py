"""Load benchmark: many concurrent light workers (no model; random LoRA-shaped tensors) against
one coordinator process on loopback, several rounds of FedIT.

Checks that no update is lost or counted twice (every round closes with exactly one push per
worker, and the coordinator's aggregate equals the mean of what was pushed), and reports the
coordinator's peak RSS and push latency p50/p99.

    python bench/load.py --workers 100 --rounds 3        # make bench-load
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.schema import UploadSpec, schema_of  # noqa: E402
from common.types import JoinRequest, PushHeader, TaskKind  # noqa: E402
from coordinator.state import StateStore  # noqa: E402
from worker.client import FederationClient  # noqa: E402

# MiniLM-like adapter: 6 layers x (query, value) x (A: 8x384, B: 384x8), float32 = 147 KB per worker
LAYERS, HIDDEN, RANK = 6, 384, 8


def adapter(seed: int, layers: int = LAYERS, hidden: int = HIDDEN, rank: int = RANK) -> dict[int, dict[str, torch.Tensor]]:
    """A random LoRA adapter on query and value: `layers` x 2 modules x (A: rank x hidden, B: hidden x rank)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        layer: {
            f"attention.self.{m}.lora_{ab}.weight": torch.randn(shape, generator=gen)
            for m in ("query", "value")
            for ab, shape in (("A", (rank, hidden)), ("B", (hidden, rank)))
        }
        for layer in range(layers)
    }


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):  # peak resident set size
                return int(line.split()[1]) / 1024
    return float("nan")


def light_worker(
    target: str,
    worker_id: str,
    latencies: list[float],
    pushed: dict[tuple[int, str], int],
    errors: list[str],
    make: Callable[[int], dict[int, dict[str, torch.Tensor]]] = adapter,
) -> None:
    """Join, then pull and push random adapters from `make(seed)` until the run is done."""
    client = FederationClient(target, worker_id, retry_for_s=600, insecure=True)
    try:
        client.get_run()
        client.join(JoinRequest(worker_id, "load-test", 10, schema_of(make(0))))
        while True:
            task = client.get_task(wait_s=5)
            if task.kind == TaskKind.DONE:
                return
            if task.kind == TaskKind.WAIT:
                continue
            client.pull(task.round)
            if task.kind == TaskKind.EVALUATE:
                client.report_metrics(task.round, {"accuracy": 0.5})
                continue
            seed = hash((worker_id, task.round)) & 0xFFFF
            update = make(seed)
            upload = task.upload or UploadSpec(())
            update = {layer: {n: t for n, t in update[layer].items() if upload.wants(n)} for layer in upload.layers}
            start = time.perf_counter()
            client.push(PushHeader(worker_id, task.round, f"{worker_id}-{task.round}", 10, {}), update, 1 << 20)
            latencies.append(time.perf_counter() - start)
            pushed[(task.round, worker_id)] = seed
    except Exception as exc:  # noqa: BLE001 - reported by the benchmark
        errors.append(f"{worker_id}: {type(exc).__name__}: {exc}")
    finally:
        client.close()


def start_coordinator(tmp: Path, cfg: dict[str, object]) -> tuple[subprocess.Popen[bytes], str]:
    """A coordinator process on loopback with `cfg`; returns it and its HOST:PORT."""
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    port_file = tmp / "port"
    coord = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "--config", str(tmp / "c.yaml"), "--port-file", str(port_file)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "coordinator.log", "wb"),  # noqa: SIM115 - the process owns it
    )
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if coord.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"coordinator did not start: {(tmp / 'coordinator.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return coord, f"127.0.0.1:{port_file.read_text().strip()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedtree-load-") as tmp:
        state = Path(tmp) / "state"
        cfg = {
            "host": "127.0.0.1",
            "port": 0,
            "insecure": True,
            "state_dir": str(state),
            "linger_s": 5,
            "long_poll_s": 5,
            "run": {"strategy": "fedit", "rounds": args.rounds, "min_workers": args.workers, "round_deadline_s": 600},
        }
        coord, target = start_coordinator(Path(tmp), cfg)
        latencies: list[float] = []
        pushed: dict[tuple[int, str], int] = {}
        errors: list[str] = []
        peak = [0.0]
        started = time.monotonic()
        threads = [
            threading.Thread(target=light_worker, args=(target, f"lw{i:03d}", latencies, pushed, errors))
            for i in range(args.workers)
        ]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if coord.poll() is None:
                peak[0] = max(peak[0], rss_mb(coord.pid))
            time.sleep(0.2)
        wall = time.monotonic() - started
        coord.wait(60)
        store = StateStore(state)
        rounds = store.rounds()
        lost_or_double = [
            r["round"] for r in rounds if r["pushes"] != args.workers or len(store.pushes(r["round"])) != args.workers
        ]
        expected_pushes = {(r, w) for r in range(1, args.rounds + 1) for w in (f"lw{i:03d}" for i in range(args.workers))}
        missing = expected_pushes - set(pushed)
        # the last aggregate must be exactly the mean of what the workers pushed in that round
        ckpt = store.load_checkpoint(args.rounds)
        last = [adapter(seed) for (r, _), seed in pushed.items() if r == args.rounds]
        error = (
            max(
                float((ckpt[f"global/{layer}/{name}"] - sum(a[layer][name] for a in last) / len(last)).abs().max())
                for layer in range(LAYERS)
                for name in last[0][layer]
            )
            if last
            else float("inf")
        )
        store.close()
    lat = sorted(latencies)
    p = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    print(
        "| workers | rounds | pushes | lost/double-counted rounds | aggregate error | errors | coordinator peak RSS | push p50 | push p99 | wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.workers} | {len(rounds)} | {len(latencies)} | {lost_or_double or 'none'} | {error:.1e} | {len(errors)} | "
        f"{peak[0]:.0f} MB | {p(0.5):.0f} ms | {p(0.99):.0f} ms | {wall:.0f} s |"
    )
    for e in errors[:5]:
        print("error:", e)
    ok = not errors and not lost_or_double and not missing and len(rounds) == args.rounds and error < 1e-5
    print("OK: every round closed with exactly one push per worker" if ok else f"FAILED: missing {sorted(missing)[:5]}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
