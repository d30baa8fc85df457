"""Write any worker's personalised adapter, as the coordinator knows it, as a PEFT adapter directory.

The coordinator holds what a worker pulls (cluster and external experts) and the lambdas it
reports with its pushes; what it can reproduce of a worker's adapter is its strategy's business
(`Strategy.personalised`): the strategies whose adapter stays partly on the worker (FedALT's
mixers, fedtree.personal's personal expert, FedSA's B, FedPer's deep layers, local) refuse with
FAILED_PRECONDITION and say to export from the worker. The classifier head is not included: in
the `frozen` and `local` head modes it never leaves the worker, and with `cluster` the
coordinator holds only the group's mean rows, not the worker's own head (export from the
worker's checkpoint for that).
Used by `python -m coordinator export` (offline, from a read-only StateView of a state directory)
and by the Admin API's ExportAdapter (the serving RoundEngine): both are an `ExportSource`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch

from common.config import RunConfig
from common.lora import save_lora_dir
from coordinator.state import StateStore
from coordinator.strategies.base import PersonalAdapter
from coordinator.strategies.fedtree import lambdas_in

Tensors = dict[str, torch.Tensor]
__all__ = ["lambdas_in", "latest_metrics", "worker_layers", "write_adapter"]


class ExportSource(Protocol):
    """What export reads of a run: the serving RoundEngine or an offline, read-only StateView."""

    @property
    def run(self) -> RunConfig: ...

    @property
    def last_closed(self) -> int: ...

    @property
    def store(self) -> StateStore: ...

    def personalised(self, worker_id: str, metrics: Mapping[str, float]) -> PersonalAdapter:
        """The worker's adapter after the last closed round (Strategy.personalised), as copies."""


def worker_layers(engine: ExportSource, worker_id: str) -> tuple[dict[int, Tensors], int]:
    """(layer -> personalised tensors, rank multiplier) for `worker_id` after the last closed round."""
    adapter = engine.personalised(worker_id, latest_metrics(engine, worker_id))  # copies, under the engine's lock
    return adapter.layers, adapter.rank_multiplier


def latest_metrics(engine: ExportSource, worker_id: str) -> dict[str, float]:
    """The metrics of the worker's latest push (e.g. its per-layer lambdas)."""
    for round in range(engine.last_closed, 0, -1):
        push = engine.store.pushes(round).get(worker_id)
        if push is not None:
            return dict(push["metrics"])
    return {}


def write_adapter(engine: ExportSource, worker_id: str, out_dir: Path) -> Path:
    layers, mult = worker_layers(engine, worker_id)
    return save_lora_dir(layers, engine.run.lora, engine.store.get("layer_prefix") or "", out_dir, mult)
