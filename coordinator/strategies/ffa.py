"""FFA-LoRA: A frozen at the shared seeded init, only B trained and shared.

Trains: B (A stays at the run's seeded init on every worker, so it is shared by construction).
Uploads: B of every layer. Uses: its own frozen A (= everyone's) and the weighted mean B.
"""

from __future__ import annotations

from common.schema import UploadSpec
from coordinator.strategies.fedit import FedIT


class FFA(FedIT):
    name = "ffa"

    def upload_spec(self, worker_id: str, round: int) -> UploadSpec:
        return UploadSpec(self.all_layers(), lora_a=False, lora_b=True)
