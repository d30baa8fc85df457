"""FedTreeLoRA's worker: its own adapter during warmup, then the mixed experts.

Rounds <= `fedtree.warmup_rounds`: plain LoRA (pulls, if any, overwrite the own adapter). From the
first round after warmup that brings a cluster expert: worker/mixed.py's cluster + external experts mixed by lambda =
sigmoid(theta) per layer (with `fedtree.personal`, worker/personal.py's third, personal expert and
phi), theta trained in its own optimiser group at `fedtree.theta_lr` and reported as lambda_<layer>
(+ personal_<layer>). Checkpoint keys (stable since before this module): external/<layer>/<name>,
theta/<layer>, personal/<layer>/<name>, phi/<layer>; metadata "mixed" and "pinned". Export: the
exact rank-2r (3r with the personal expert) LoRA of the mix.
A worker that joins after the tree is built (or missed the build round) is not told so: the
coordinator sends it nothing while it runs its own warmup and is placed, so it keeps training its
own adapter until the first pull that brings a cluster expert, whatever the round number. A round
without downloads after the switch (re-placed after a rebuild) leaves the mix as it is.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from common.chunking import Role
from common.lora import concat_experts, concat_weighted
from worker.mixed import MixedExperts
from worker.personal import PersonalExperts, mixed_experts
from worker.strategies.base import LayerTensors, ParamGroup, Personalised, Pulled, Tensors, WorkerStrategy

log = logging.getLogger(__name__)


class FedTreeWorker(WorkerStrategy):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mixed: MixedExperts | None = None  # after warmup

    def apply(self, round: int, pulled: Pulled) -> None:
        experts = any(Role.CLUSTER in roles for roles in pulled.values())
        if round <= self.run.fedtree.warmup_rounds or (self.mixed is None and not experts):
            super().apply(round, pulled)  # warmup (also a late joiner's own): plain LoRA
            return
        if not experts:  # nothing pulled this round: keep the mix as it stands
            return
        if self.mixed is None:
            # with fedtree.personal, our adapter as it stands (end of warmup) becomes the personal
            # expert here, before the pulled cluster expert overwrites it
            self.mixed = mixed_experts(self.lm, self.run.lora, self.run.fedtree)
            log.info(
                "[Worker] round %d: switching to mixed cluster/external%s experts",
                round,
                "/personal" if self.run.fedtree.personal else "",
            )
        self.mixed.load(pulled)

    def extra_param_groups(self) -> list[ParamGroup]:
        return [(self.mixed.theta_parameters(), self.run.fedtree.theta_lr)] if self.mixed else []

    def metrics(self) -> dict[str, float]:
        return self.mixed.metrics() if self.mixed else {}  # lambda_<layer> (+ personal_<layer>)

    # -- checkpoint ----------------------------------------------------------------------------
    def state(self) -> tuple[Tensors, dict[str, Any]]:
        mixed = self.mixed
        tensors: Tensors = {}
        if mixed is not None:
            tensors.update(_flat(mixed.external_layers(), "external"))
            tensors.update({f"theta/{layer}": t.detach().clone().reshape(1) for layer, t in mixed.theta.items()})
        if isinstance(mixed, PersonalExperts):
            tensors.update(_flat(mixed.personal_layers(), "personal"))
            tensors.update({f"phi/{layer}": t.detach().clone() for layer, t in mixed.phi.items()})
        return tensors, {"mixed": mixed is not None, "pinned": sorted(mixed.pinned) if mixed else []}

    def restore(self, tensors: Tensors, meta: dict[str, Any]) -> None:
        if not meta.get("mixed"):
            return
        mixed = self.mixed = mixed_experts(self.lm, self.run.lora, self.run.fedtree)
        personal: LayerTensors = {}
        with torch.no_grad():
            for key, tensor in tensors.items():
                kind, rest = key.split("/", 1)
                if kind == "external":
                    layer, name = rest.split("/", 1)
                    mixed.external[int(layer)][name].copy_(tensor)
                elif kind == "theta":
                    mixed.theta[rest].copy_(tensor.reshape(()))
                elif kind == "personal":
                    layer, name = rest.split("/", 1)
                    personal.setdefault(int(layer), {})[name] = tensor
                elif kind == "phi" and isinstance(mixed, PersonalExperts):
                    mixed.phi[rest].copy_(tensor)
        if isinstance(mixed, PersonalExperts):
            if not personal:
                raise ValueError("the checkpoint of a fedtree.personal run holds no personal expert")
            mixed.load_personal(personal)
        mixed.pinned = set(int(x) for x in meta["pinned"])

    # -- export --------------------------------------------------------------------------------
    def personalised(self) -> Personalised:
        """B' = [lam B_c | (1 - lam) B_e], A' = [A_c ; A_e] at rank 2r; with a personal expert
        B' = [w_c B_c | w_e B_e | w_p B_p], A' = [A_c ; A_e ; A_p] at 3r (zero external blocks in
        a layer with one cluster: one PEFT config has one rank)."""
        own, mixed = self.lm.layers(), self.mixed
        if mixed is None:
            return Personalised(own, 1)
        external = mixed.external_layers()
        if isinstance(mixed, PersonalExperts):
            personal = mixed.personal_layers()
            out: LayerTensors = {}
            for layer, tensors in own.items():
                w_c, w_e, w_p = (float(w) for w in mixed.weights(layer).detach())
                out[layer] = concat_weighted([(tensors, w_c), (external[layer], w_e), (personal[layer], w_p)])
            return Personalised(out, 3)
        return Personalised({layer: concat_experts(t, external[layer], mixed.lam_value(layer)) for layer, t in own.items()}, 2)


def _flat(layers: LayerTensors, prefix: str) -> Tensors:
    return {f"{prefix}/{layer}/{name}": t for layer, named in layers.items() for name, t in named.items()}
