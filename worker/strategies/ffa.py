"""FFA-LoRA's worker: A stays frozen at the run's seeded init (shared by construction), B trains."""

from __future__ import annotations

from common.schema import is_lora_a
from worker.model import LoraModel
from worker.strategies.base import WorkerStrategy


class FFAWorker(WorkerStrategy):
    def prepare(self, lm: LoraModel) -> None:
        super().prepare(lm)
        for named in lm.params.values():
            for name, param in named.items():
                if is_lora_a(name):
                    param.requires_grad_(False)
