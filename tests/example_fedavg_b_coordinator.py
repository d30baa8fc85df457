"""FedAvg-B: FedAvg on the B matrices only (the worked example of README "Add a strategy").

Trains: A and B. Uploads: B of every layer. Uses: its own A, and the midpoint of its own B and
the weighted mean B of everyone.
"""

from __future__ import annotations

from common.schema import UploadSpec
from coordinator.strategies.fedit import FedIT


class FedAvgB(FedIT):
    name = "fedavg-b"

    def upload_spec(self, worker_id: str, round: int) -> UploadSpec:
        return UploadSpec(self.all_layers(), lora_a=False, lora_b=True)
