"""FedAvg-B's worker: the pulled mean B is blended half and half with its own B."""

from __future__ import annotations

from common.chunking import Role
from worker.strategies.base import Pulled, WorkerStrategy


class FedAvgBWorker(WorkerStrategy):
    def apply(self, round: int, pulled: Pulled) -> None:
        own = self.lm.layers()
        self.lm.load_layers(
            {
                layer: {name: (own[layer][name] + mean) / 2 for name, mean in roles[Role.CLUSTER].items()}
                for layer, roles in pulled.items()
                if Role.CLUSTER in roles
            }
        )
