"""fedtree's real transfer path for bench/transfer.py.

A real coordinator process (`python -m coordinator`, FedIT, loopback, insecure) and light worker
processes that use the real worker client (FederationClient) without a model: round 1 pushes a
LoRA-shaped adapter of the requested size (the download of round 1 is empty: FedIT has no global
adapter yet); every later round is timed: pull the full global adapter (= the payload), then push
it straight back. The push includes the coordinator's reassembly, digest check, safetensors
decode, validation and folding into the round's weighted sum -- everything but training. Each
worker reports its peak RSS; the caller reads the coordinator's (`peak_rss`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]

# A LLaMA-7B-like adapter: 32 blocks x {q, v} x (A: r x 4096, B: 4096 x r); r sets the size.
LAYERS, HIDDEN, MODULES = 32, 4096, ("q_proj", "v_proj")


@dataclass(frozen=True)
class Payload:
    mib: int
    dtype: torch.dtype

    @property
    def rank(self) -> int:
        per_rank = LAYERS * len(MODULES) * 2 * HIDDEN * torch.tensor([], dtype=self.dtype).element_size()
        return max(1, (self.mib << 20) // per_rank)

    @property
    def nbytes(self) -> int:
        return self.rank * LAYERS * len(MODULES) * 2 * HIDDEN * torch.tensor([], dtype=self.dtype).element_size()

    def tensors(self, seed: int = 0) -> dict[int, dict[str, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        r = self.rank
        return {
            layer: {
                f"self_attn.{m}.lora_{ab}.weight": (torch.randn(shape, generator=gen) * 0.02).to(self.dtype)
                for m in MODULES
                for ab, shape in (("A", (r, HIDDEN)), ("B", (HIDDEN, r)))
            }
            for layer in range(LAYERS)
        }


def start_coordinator(tmp: Path, rounds: int, run_extra: dict[str, Any] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A coordinator process on loopback for 2 workers; returns (process, target)."""
    from load import start_coordinator as start  # bench/ is on sys.path (transfer.py puts it there)

    cfg = {
        "host": "127.0.0.1",
        "port": 0,
        "insecure": True,
        "state_dir": str(tmp / "state"),
        "linger_s": 0,
        "long_poll_s": 5,
        "log_level": "WARNING",
        "run": {"strategy": "fedit", "rounds": rounds, "min_workers": 2, "round_deadline_s": 900, **(run_extra or {})},
    }
    return start(tmp, cfg)


def peak_rss(pid: int | str = "self") -> int:
    """Peak resident set size (VmHWM) of a process, in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def rss(pid: int | str = "self") -> int:
    """Resident set size (VmRSS) of a process now, in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def worker(target: str, coordinator_pid: int, worker_id: str, payload: Payload, results: Any) -> None:
    """Process entry point: join, push the payload in round 1, then echo every round's download.
    It keeps only what a worker must (its adapter, the adapter it pulled) and the last round's
    echo, so its peak RSS is about 2x the payload plus the interpreter."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from transfer_raw import proc_cpu

    from common.chunking import Role
    from common.schema import schema_of
    from common.types import JoinRequest, PushHeader, TaskKind
    from worker.client import FederationClient

    adapter = payload.tensors()
    client = FederationClient(target, worker_id, retry_for_s=120, insecure=True)
    _, run = client.get_run()
    client.join(JoinRequest(worker_id, "transfer-bench", 10, schema_of(adapter)))
    last: dict[int, dict[str, torch.Tensor]] = {}
    while True:
        task = client.get_task(wait_s=5)
        if task.kind in (TaskKind.DONE, TaskKind.EVALUATE):
            break
        if task.kind == TaskKind.WAIT:
            continue
        start, cpu, coord_cpu = time.perf_counter(), time.process_time(), proc_cpu(coordinator_pid)
        pulled = client.pull(task.round)
        update = {layer: roles[Role.CLUSTER] for layer, roles in pulled.items()} if pulled else adapter
        client.push(PushHeader(worker_id, task.round, f"{worker_id}-{task.round}", 10, {}), update, run.chunk_size)
        end, cpu = time.perf_counter(), time.process_time() - cpu
        if task.round > 1:
            results.put((task.round - 2, start, end, True, cpu, coord_cpu, proc_cpu(coordinator_pid)))
            if task.round == run.rounds:
                last = update
        del pulled, update
    client.close()
    ok = sorted(last) == sorted(adapter) and all(
        torch.allclose(last[layer][n].float(), t.float(), rtol=1e-2, atol=1e-6)
        for layer, named in adapter.items()
        for n, t in named.items()
    )
    results.put((-1, float(peak_rss()), 0.0, ok, 0.0, 0.0, 0.0))
