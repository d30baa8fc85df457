"""FedIT: FedAvg on LoRA.

Trains: A and B. Uploads: A and B of every layer.
Uses: the example-weighted mean A and mean B of all workers (its classifier head stays local unless
head_mode is cluster: then it is averaged per label over everyone, see base.Strategy.head_group).
"""

from __future__ import annotations

from typing import Any

import torch

from common.chunking import Role
from common.schema import UploadSpec
from coordinator.aggregation import WeightedSum
from coordinator.strategies.base import Download, LayerTensors, Strategy, flatten, unflatten


class FedIT(Strategy):
    name = "fedit"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.global_adapter: LayerTensors = {}
        self._pending = WeightedSum()

    def upload_spec(self, worker_id: str, round: int) -> UploadSpec:
        return UploadSpec(self.all_layers(), lora_a=True, lora_b=True)

    def downloads(self, worker_id: str, round: int) -> list[Download]:
        return [Download(layer, Role.CLUSTER, "global", t) for layer, t in sorted(self.global_adapter.items())]

    def _sink(self, layer: int, group: int, tensors: dict[str, torch.Tensor], weight: float) -> None:
        self._pending.add(layer, tensors, weight)

    def accumulate(self, worker_id: str, round: int, update: LayerTensors, weight: float) -> None:
        for layer, tensors in update.items():
            self.robust.add(self._sink, layer, 0, tensors, weight)

    def close_round(self, round: int) -> None:
        self.robust.flush(self._sink)
        if self._pending.sums:  # a round nobody pushed to keeps the previous global adapter
            self.global_adapter = self._pending.take_means()  # in the sums' memory: no second adapter-sized copy
        self._pending = WeightedSum()

    def state(self) -> dict[str, torch.Tensor]:
        return flatten(self.global_adapter, "global")

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
        self.global_adapter = unflatten(tensors, "global")
