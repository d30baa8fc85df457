"""FedSA-LoRA: A is shared, B stays local.

Trains: A and B. Uploads: A of every layer. Uses: the weighted mean A of everyone and its own B.
"""

from __future__ import annotations

from common.schema import UploadSpec
from coordinator.strategies.fedit import FedIT


class FedSA(FedIT):
    name = "fedsa"

    def upload_spec(self, worker_id: str, round: int) -> UploadSpec:
        return UploadSpec(self.all_layers(), lora_a=True, lora_b=False)
