"""FedALT: own LoRA + frozen rest-of-world LoRA, mixed per token by a local softmax mixer.

Trains: its own A and B and a per-module 2-way mixer (local, never uploaded).
Uploads: its own A and B of every layer, every round.
Uses: its own adapter (never overwritten) plus, frozen, the weighted mean of every OTHER
worker's own adapter from the previous round (the EXTERNAL role), computed from sums:
(total - own) / (w_total - w_own), O(workers) per layer.
"""

from __future__ import annotations

from typing import Any

from common.chunking import Role
from common.schema import UploadSpec
from coordinator.strategies.base import Download, LayerTensors, Strategy
from coordinator.tree import ClusterSums


class FedALT(Strategy):
    name = "fedalt"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ids: dict[str, int] = {}  # worker -> its own "cluster" in the sums
        self.sums = ClusterSums()
        self._pending = ClusterSums()

    def upload_spec(self, worker_id: str, round: int) -> UploadSpec:
        return UploadSpec(self.all_layers(), lora_a=True, lora_b=True)

    def downloads(self, worker_id: str, round: int) -> list[Download]:
        own = self.ids.get(worker_id)
        out = []
        for layer in self.all_layers():
            if not self.sums.weights.get(layer):
                continue
            if own is not None and own in self.sums.weights[layer]:
                rest = self.sums.external_mean(layer, own)
                key = f"row-{own}"
            else:  # no upload of its own last round: everyone's mean is its rest of world
                rest = self.sums.total_mean(layer)
                key = "all"
            if rest is not None:
                out.append(Download(layer, Role.EXTERNAL, key, rest))
        return out

    def accumulate(self, worker_id: str, round: int, update: LayerTensors, weight: float) -> None:
        own = self.ids.setdefault(worker_id, len(self.ids))
        for layer, tensors in update.items():
            self._pending.add(layer, own, tensors, weight)

    def close_round(self, round: int) -> None:
        if self._pending.total_weights:
            self.sums = self._pending
        self._pending = ClusterSums()
