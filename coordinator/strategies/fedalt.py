"""FedALT: own LoRA + frozen rest-of-world LoRA, mixed per token by a local softmax mixer.

Trains: its own A and B and a per-module 2-way mixer (local, never uploaded).
Uploads: its own A and B of every layer, every round.
Uses: its own adapter (never overwritten) plus, frozen, the weighted mean of every OTHER
worker's own adapter from the previous round (the EXTERNAL role), computed from sums:
(total - own) / (w_total - w_own), O(workers) per layer.
Robust aggregation (`robust.method` other than mean): a worker's rest of world is the robust
aggregate (coordinate median, trimmed mean, centred clip) of the others' adapters of the previous
round, reduced when it is first pulled (memoised until the next round closes).
Export from the coordinator: refused, the mixers never leave the worker (export from the worker).
Checkpointed with every closed round (each worker's adapter of that round and its weight), so a
restarted coordinator hands out the same rest of world.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from common.chunking import Role
from common.errors import FailedPrecondition
from common.schema import UploadSpec
from coordinator.strategies.base import EXPORT_FROM_WORKER, Download, LayerTensors, PersonalAdapter, Strategy
from coordinator.tree import ClusterSums

Tensors = dict[str, torch.Tensor]


class FedALT(Strategy):
    name = "fedalt"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ids: dict[str, int] = {}  # worker -> its own "cluster" in the sums
        self.sums = ClusterSums()
        self._pending = ClusterSums()
        self._robust_rest: dict[tuple[int, int | None], Tensors] = {}  # (layer, own id or None) -> robust rest of world

    def upload_spec(self, worker_id: str, round: int) -> UploadSpec:
        return UploadSpec(self.all_layers(), lora_a=True, lora_b=True)

    def downloads(self, worker_id: str, round: int) -> list[Download]:
        own = self.ids.get(worker_id)
        out = []
        for layer in self.all_layers():
            if not self.sums.weights.get(layer):
                continue
            pushed = own is not None and own in self.sums.weights[layer]
            # no upload of its own last round: everyone's adapter is its rest of world
            key = f"row-{own}" if pushed else "all"
            rest = self._rest_of_world(layer, own if pushed else None)
            if rest is not None:
                out.append(Download(layer, Role.EXTERNAL, key, rest))
        return out

    def _rest_of_world(self, layer: int, own: int | None) -> Tensors | None:
        """The aggregate of every adapter of `layer` but `own`'s (None: of all of them)."""
        if not self.robust.buffers:
            return self.sums.total_mean(layer) if own is None else self.sums.external_mean(layer, own)
        if (layer, own) not in self._robust_rest:
            others = [c for c in self.sums.clusters(layer) if c != own]
            if not others:
                return None
            weights = self.sums.weights[layer]
            means = [self.sums.cluster_mean(layer, c) for c in others]
            self._robust_rest[(layer, own)] = self.robust.reduce(means, [weights[c] for c in others])
        return self._robust_rest[(layer, own)]

    def accumulate(self, worker_id: str, round: int, update: LayerTensors, weight: float) -> None:
        own = self.ids.setdefault(worker_id, len(self.ids))
        for layer, tensors in update.items():
            self._pending.add(layer, own, tensors, weight)

    def close_round(self, round: int) -> None:
        if self._pending.total_weights:
            self.sums = self._pending
            self._robust_rest = {}
        self._pending = ClusterSums()

    def personalised(self, worker_id: str, round: int, metrics: Mapping[str, float]) -> PersonalAdapter:
        raise FailedPrecondition(
            f"fedalt mixes {worker_id}'s own adapter with the rest of world through per-token mixers that never leave "
            f"the worker: {EXPORT_FROM_WORKER}"
        )

    # -- persistence: each worker's last adapter (its "cluster" of one) and weight ------------------
    def state(self) -> dict[str, torch.Tensor]:
        return {
            f"own/{layer}/{own}/{name}": tensor
            for layer, owners in self.sums.weights.items()
            for own in owners
            for name, tensor in self.sums.cluster_mean(layer, own).items()
        }

    def meta(self) -> dict[str, Any]:
        return {
            "ids": dict(self.ids),
            "weights": {str(layer): {str(o): w for o, w in ws.items()} for layer, ws in self.sums.weights.items()},
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
        meta = meta or {}
        self.ids = {str(w): int(i) for w, i in (meta.get("ids") or {}).items()}
        means: dict[tuple[int, int], Tensors] = {}
        for key, tensor in tensors.items():
            _, layer_id, own_id, name = key.split("/", 3)
            means.setdefault((int(layer_id), int(own_id)), {})[name] = tensor
        self.sums = ClusterSums()
        for (layer, own), mean in sorted(means.items()):
            self.sums.add(layer, own, mean, float(meta["weights"][str(layer)][str(own)]))
        self._robust_rest = {}
