"""Local: no federation (the lower baseline).

Trains: A and B, locally. Uploads: nothing (a push carries only its example count and metrics).
Uses: its own adapter (and its own classifier head: no head group, whatever head_mode says).
"""

from __future__ import annotations

from common.schema import UploadSpec
from coordinator.strategies.base import Download, LayerTensors, Strategy


class Local(Strategy):
    name = "local"

    def upload_spec(self, worker_id: str, round: int) -> UploadSpec:
        return UploadSpec(layers=(), lora_a=False, lora_b=False)

    def downloads(self, worker_id: str, round: int) -> list[Download]:
        return []

    def head_group(self, worker_id: str, round: int) -> str | None:
        return None

    def accumulate(self, worker_id: str, round: int, update: LayerTensors, weight: float) -> None:
        return None

    def close_round(self, round: int) -> None:
        return None
