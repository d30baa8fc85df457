"""FedPer on LoRA: shallow layers shared, deep layers personal.

Trains: A and B of every layer. Uploads: A and B of the first L_s layers only
(`run.fedper_shared_layers`, default L/2). Uses: the weighted mean for layers < L_s, its own
adapter above.
"""

from __future__ import annotations

from typing import Any

from common.schema import UploadSpec
from coordinator.strategies.fedit import FedIT


class FedPer(FedIT):
    name = "fedper"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        layers = self.all_layers()
        shared = self.run.fedper_shared_layers if self.run.fedper_shared_layers is not None else len(layers) // 2
        self.shared_layers = layers[: max(0, min(shared, len(layers)))]

    def upload_spec(self, worker_id: str, round: int) -> UploadSpec:
        return UploadSpec(self.shared_layers, lora_a=True, lora_b=True)
