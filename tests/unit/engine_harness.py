"""Shared harness of the RoundEngine tests: a fake clock, a real StateStore, tiny tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from common.config import CoordinatorConfig, RunConfig
from common.schema import TensorSpec
from common.types import JoinRequest, PushHeader, PushResult, Task
from coordinator.engine import PushTicket, RoundEngine
from coordinator.state import StateStore
from coordinator.strategies.fedit import FedIT

A = "q.lora_A.weight"
B = "q.lora_B.weight"
T0 = 1000.0
DEADLINE = 100.0
SCHEMA = {layer: {A: TensorSpec(A, (2, 4), "float32"), B: TensorSpec(B, (4, 2), "float32")} for layer in (0, 1)}
FP = "fingerprint-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(tmp_path: Path) -> CoordinatorConfig:
    return CoordinatorConfig(state_dir=tmp_path, run=RunConfig(rounds=2, min_workers=2, round_deadline_s=DEADLINE))


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.store = StateStore(tmp_path)
        self.engine = RoundEngine(config(tmp_path), self.store, clock=lambda: self.clock.now)
        self.engine.resume()

    def restart(self) -> RoundEngine:
        self.store.close()
        self.store = StateStore(self.tmp_path)
        self.engine = RoundEngine(config(self.tmp_path), self.store, clock=lambda: self.clock.now)
        self.engine.resume()  # what a restarted coordinator does before it serves
        return self.engine

    def join(self, worker: str, fingerprint: str = FP, schema: dict = SCHEMA, n: int = 10) -> tuple[str, RunConfig, int]:
        return self.engine.join(JoinRequest(worker, fingerprint, n, schema))

    def task(self, worker: str) -> Task:
        return self.engine.get_task(worker, 0)

    def push(self, worker: str, round: int, value: float, num_examples: int, upload_id: str | None = None) -> PushResult:
        """The servicer's path: begin_push, then (unless it is a duplicate) commit the update."""
        header = PushHeader(worker, round, upload_id or f"{worker}-{round}", num_examples, {"loss": value})
        admitted = self.engine.begin_push(header)
        if isinstance(admitted, PushResult):
            return admitted
        return self.engine.commit(admitted, update(value), nbytes=100)

    def ticket(self, worker: str, round: int, upload_id: str, num_examples: int = 1) -> PushTicket:
        """A begin_push that must admit the push."""
        admitted = self.engine.begin_push(PushHeader(worker, round, upload_id, num_examples, {}))
        assert isinstance(admitted, PushTicket), admitted
        return admitted

    def global_adapter(self) -> dict[int, dict[str, list]]:
        strategy = self.engine.strategy
        assert isinstance(strategy, FedIT)
        return {layer: {n: t.tolist() for n, t in ts.items()} for layer, ts in strategy.global_adapter.items()}


def update(value: float) -> dict[int, dict[str, torch.Tensor]]:
    """Layer l: A = arange(8) reshaped (2,4) + 10*l + value, B = full(value - l)."""
    return {
        layer: {
            A: torch.arange(8, dtype=torch.float32).reshape(2, 4) + 10 * layer + value,
            B: torch.full((4, 2), value - layer, dtype=torch.float32),
        }
        for layer in (0, 1)
    }


def as_lists(layers: dict[int, dict[str, torch.Tensor]]) -> dict[int, dict[str, list]]:
    return {layer: {n: t.tolist() for n, t in ts.items()} for layer, ts in layers.items()}
