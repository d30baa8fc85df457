"""A federation in one process, as the benchmarks run it: a real coordinator on a loopback port and
real worker.runner.Workers as threads talking gRPC to it (the same code as the distributed path)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import CoordinatorConfig, DataConfig, RunConfig, WorkerConfig

if TYPE_CHECKING:
    from coordinator.server import Coordinator
    from worker.runner import Worker


def start_coordinator(run: RunConfig, state_dir: Path) -> tuple[Coordinator, int]:
    """A started coordinator on 127.0.0.1 (port 0: the OS picks it), insecure; returns it and its port."""
    from coordinator.server import Coordinator

    cfg = CoordinatorConfig(host="127.0.0.1", port=0, state_dir=state_dir, run=run, long_poll_s=1.0, insecure=True)
    coordinator = Coordinator(cfg)
    return coordinator, coordinator.start()


def loopback_worker(client_id: str, port: int, data: DataConfig, output_dir: Path, **overrides: Any) -> WorkerConfig:
    """A worker's config for the coordinator on 127.0.0.1:`port`: no progress bars, insecure."""
    fields: dict[str, Any] = {
        "worker_id": client_id,
        "coordinator": f"127.0.0.1:{port}",
        "data": data,
        "output_dir": output_dir,
        "progress": False,
        "heartbeat_s": 5.0,
        "insecure": True,
        **overrides,
    }
    return WorkerConfig(**fields)


def start_worker(worker: Worker, codes: dict[str, int]) -> threading.Thread:
    """Run `worker` to its end in a thread of its own; its exit code lands in `codes`."""
    thread = threading.Thread(
        target=lambda: codes.__setitem__(worker.config.worker_id, worker.run_forever()), name=worker.config.worker_id
    )
    thread.start()
    return thread


def run_workers(workers: list[Worker]) -> dict[str, int]:
    """Every worker in its own thread, all at once, until all have ended; their exit codes."""
    codes: dict[str, int] = {}
    for thread in [start_worker(w, codes) for w in workers]:
        thread.join()
    return codes
