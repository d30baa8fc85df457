"""The worker half of a strategy: how a worker sets up, loads, trains, uploads, keeps and exports.

The coordinator half (coordinator/strategies/<name>.py) decides what a worker pulls and pushes;
this half decides what the worker does with it. The runner calls the hooks in this order:
`prepare` once the seeded model is built (before a checkpoint is restored into it), `apply` with
every round's validated downloads, `extra_param_groups` and `metrics` around local training,
`update` for the push, `state`/`restore` for the worker checkpoint, `personalised` and
`export_extras` for the exported adapter. The defaults are plain LoRA: a CLUSTER download
overwrites the own adapter, the own adapter is uploaded and exported, nothing else is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.chunking import Role
from common.config import RunConfig
from common.schema import UploadSpec
from worker.model import LoraModel

Tensors = dict[str, torch.Tensor]
LayerTensors = dict[int, Tensors]
# layer -> role -> tensors: a round's downloads, validated against the model, without the head blob
Pulled = dict[int, dict[Role, Tensors]]
ParamGroup = tuple[list[torch.nn.Parameter], float]  # (parameters, learning rate)


@dataclass(frozen=True)
class Personalised:
    """The worker's model as one plain LoRA: layer -> tensors at rank `rank_multiplier` x r
    (alpha scaled alike), written as the exported PEFT adapter."""

    layers: LayerTensors
    rank_multiplier: int = 1


class WorkerStrategy:
    """Plain LoRA; a strategy whose worker does more overrides the hooks it needs."""

    def __init__(self, run: RunConfig) -> None:
        self.run = run
        self._lm: LoraModel | None = None

    @property
    def lm(self) -> LoraModel:
        if self._lm is None:
            raise RuntimeError(f"worker strategy '{self.run.strategy}' used before prepare()")
        return self._lm

    def prepare(self, lm: LoraModel) -> None:
        """The seeded model is built: freeze what must not train, add what trains besides it."""
        self._lm = lm

    def apply(self, round: int, pulled: Pulled) -> None:
        """Load the downloads of `round`: every CLUSTER blob overwrites those own tensors."""
        self.lm.load_layers({layer: roles[Role.CLUSTER] for layer, roles in pulled.items() if Role.CLUSTER in roles})

    def extra_param_groups(self) -> list[ParamGroup]:
        """Parameters trained in optimiser groups of their own (at their own learning rate, no
        weight decay); every other parameter with requires_grad trains at the run's rate."""
        return []

    def metrics(self) -> dict[str, float]:
        """Facts about the local model reported with every push (e.g. lambda_<layer>)."""
        return {}

    def update(self, spec: UploadSpec) -> LayerTensors:
        """The adapter tensors a push carries: those of the own adapter that `spec` asks for."""
        layers = self.lm.layers()
        return {layer: {n: t for n, t in layers[layer].items() if spec.wants(n)} for layer in spec.adapter_layers}

    def state(self) -> tuple[Tensors, dict[str, Any]]:
        """What the worker checkpoint keeps beside the own adapter and the head: (tensors under
        keys of the strategy's own, JSON-safe facts merged into the checkpoint's metadata)."""
        return {}, {}

    def restore(self, tensors: Tensors, meta: dict[str, Any]) -> None:
        """Rebuild the local state from a checkpoint (all its tensors and metadata; the own
        adapter and the head are restored already)."""

    def personalised(self) -> Personalised:
        """The adapter that reproduces the worker's model, for export."""
        return Personalised(self.lm.layers(), 1)

    def export_extras(self, out_dir: Path) -> list[Path]:
        """Files beside the exported PEFT adapter for what one LoRA cannot hold (the paths written)."""
        return []
