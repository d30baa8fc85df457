"""The strategy interface: what a worker pulls, what it pushes, and how pushes are combined.

A strategy is pure logic on tensors: no gRPC, no files. The round engine calls it under its
lock; the state store persists what `state()` returns with every closed round.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from common.chunking import Role
from common.config import RunConfig
from common.schema import Schema, UploadSpec
from coordinator.robust import RobustBuffer

Tensors = dict[str, torch.Tensor]
# layer -> tensors
LayerTensors = dict[int, Tensors]


@dataclass(frozen=True)
class Download:
    """One blob a worker pulls. `share_key` names the content so the engine can encode a blob
    once and stream it to every worker that gets the same one (e.g. FedIT's global adapter)."""

    layer: int
    role: Role
    share_key: str
    tensors: Tensors


class Strategy(ABC):
    """Base class of every aggregation strategy."""

    name: ClassVar[str]

    def __init__(self, run: RunConfig, schema: Schema, spill_dir: Path | None = None) -> None:
        self.run = run
        self.spill_dir = spill_dir
        self.schema = schema
        self.num_layers = len(schema)
        # pushes go through here into the strategy's sums: straight (mean) or buffered (robust)
        self.robust = RobustBuffer(run.robust)

    @abstractmethod
    def upload_spec(self, worker_id: str, round: int) -> UploadSpec:
        """Which tensors the worker must push after training in `round`."""

    @abstractmethod
    def downloads(self, worker_id: str, round: int) -> list[Download]:
        """The blobs the worker pulls before training in `round` (empty = keep its own)."""

    @abstractmethod
    def accumulate(self, worker_id: str, round: int, update: LayerTensors, weight: float) -> None:
        """Fold one fully validated push into the round's running sums."""

    @abstractmethod
    def close_round(self, round: int) -> None:
        """Turn the round's sums into what workers pull next round."""

    def begin_round(self, round: int, participants: dict[str, int]) -> None:  # noqa: B027 - optional hook
        """Called when a round opens with its participants and their example counts."""

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint after a closed round (flat names)."""
        return {}

    def meta(self) -> dict[str, Any]:
        """JSON-safe facts to checkpoint beside `state()` (e.g. the tree and its cuts)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:  # noqa: B027
        """Restore from `state()` and `meta()` after a coordinator restart."""

    def all_layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.schema))


def flatten(layers: LayerTensors, prefix: str) -> dict[str, torch.Tensor]:
    """{layer: {name: t}} -> {"prefix/layer/name": t} for checkpoints."""
    return {f"{prefix}/{layer}/{name}": t for layer, tensors in layers.items() for name, t in tensors.items()}


def unflatten(flat: dict[str, torch.Tensor], prefix: str) -> LayerTensors:
    out: LayerTensors = {}
    for key, tensor in flat.items():
        head, layer, name = key.split("/", 2)
        if head == prefix:
            out.setdefault(int(layer), {})[name] = tensor
    return out
