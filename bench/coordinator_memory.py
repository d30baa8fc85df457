"""Coordinator memory benchmark: peak RSS of one coordinator process with 10, 100 and 400 light
workers (threads of this process, no model) pushing 16 MB adapters, under a flat aggregate
(FedIT: one group) and a 4-cluster tree (FedTreeLoRA with fixed_k=4, tree built from round 1's
uploads, then one tree round). Target: peak RSS grows with clusters, not with workers; 400
workers under 2 GB.

    python bench/coordinator_memory.py              # 10, 100, 400 workers (~15 min on 2 cores)
    python bench/coordinator_memory.py --quick      # 10 and 40 workers, 4 MB adapters
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load import adapter, light_worker, rss_mb, start_coordinator  # noqa: E402

from coordinator.state import StateStore  # noqa: E402

# 16 MB of float32 LoRA: 32 layers x {query, value} x (A: 16 x 2048, B: 2048 x 16)
LAYERS, HIDDEN, RANK = 32, 2048, 16


def run(workers: int, strategy: str, layers: int, tmp: Path) -> dict[str, float]:
    cfg = {
        "host": "127.0.0.1",
        "port": 0,
        "insecure": True,
        "state_dir": str(tmp / "state"),
        "linger_s": 2,
        "long_poll_s": 5,
        "run": {
            "strategy": strategy,
            "rounds": 2,
            "min_workers": workers,
            "round_deadline_s": 1800,
            "fedtree": {"warmup_rounds": 1, "fixed_k": 4},
        },
    }
    coord, target = start_coordinator(tmp, cfg)
    make = functools.partial(adapter, layers=layers, hidden=HIDDEN, rank=RANK)
    latencies: list[float] = []
    pushed: dict[tuple[int, str], int] = {}
    errors: list[str] = []
    threads = [
        threading.Thread(target=light_worker, args=(target, f"m{i:03d}", latencies, pushed, errors, make), daemon=True)
        for i in range(workers)
    ]
    started = time.monotonic()
    peak = 0.0
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if coord.poll() is None:
            peak = max(peak, rss_mb(coord.pid))
        time.sleep(0.2)
    wall = time.monotonic() - started
    coord.wait(120)
    store = StateStore(tmp / "state")
    try:
        rounds = store.rounds()
        complete = len(rounds) == 2 and all(len(store.pushes(r["round"])) == workers for r in rounds)
    finally:
        store.close()
    if errors or not complete:
        raise RuntimeError(f"{strategy} with {workers} workers: errors {errors[:3]}, rounds {rounds}")
    return {"peak_mb": peak, "wall_s": wall, "pushes": float(len(latencies))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 and 40 workers with 4 MB adapters")
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (default 10,100,400)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the light workers' retry warnings would drown the table
    counts = [int(n) for n in (args.workers or ("10,40" if args.quick else "10,100,400")).split(",")]
    layers = LAYERS // 4 if args.quick else LAYERS
    mb = layers * 2 * 2 * HIDDEN * RANK * 4 / 2**20
    print(
        f"coordinator peak RSS, {mb:.0f} MB adapters ({layers} layers x query/value, r={RANK}, d={HIDDEN}), 2 rounds", flush=True
    )
    rows = []
    for strategy, label in (("fedit", "flat (FedIT, 1 group)"), ("fedtree", "tree (FedTreeLoRA, 4 clusters)")):
        for n in counts:
            with tempfile.TemporaryDirectory(prefix="fedtree-mem-") as tmp:
                result = run(n, strategy, layers, Path(tmp))
            rows.append((label, n, result))
            print(f"  {label:<32} {n:>4} workers: peak RSS {result['peak_mb']:6.0f} MB, {result['wall_s']:.0f} s", flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\nCommand: `python bench/coordinator_memory.py{' --quick' if args.quick else ''}` — {machine}\n")
    print("| aggregation | workers | pushed per round | coordinator peak RSS | per worker | wall |")
    print("|---|---|---|---|---|---|")
    for label, n, r in rows:
        print(f"| {label} | {n} | {n * mb:.0f} MB | {r['peak_mb']:.0f} MB | {r['peak_mb'] / n:.1f} MB | {r['wall_s']:.0f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
