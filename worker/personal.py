"""An option beyond the paper (`fedtree.personal`): FedTreeLoRA's mix plus a personal expert.

Every adapted module computes  W0 x + s (w_c B_c A_c x + w_e B_e A_e x + w_p B_p A_p x)  with
(w_c, w_e, w_p) = softmax(phi_l), one learnable 3-vector per transformer layer shared by that
layer's modules. The personal expert is a third peft adapter "personal": a copy of the worker's
own adapter as it stands when the mixed model is built (the end of warmup, before the first
cluster expert overwrites "default"), trained locally, never uploaded (the upload is read from
"default" only: `LoraModel.params`) and never touched by a pull. In a layer with one cluster
(no external expert) the external share goes to the cluster expert, as lam = 1 does without a
personal expert: (w_c, w_p) = (softmax(phi)_c + softmax(phi)_e, softmax(phi)_p), i.e. a softmax
over the experts present with the cluster's logit logsumexp(phi_c, phi_e). phi starts at
log(lambda_init (1 - p0), (1 - lambda_init)(1 - p0), p0), p0 = `fedtree.personal_init`:
weights (lambda_init (1 - p0), (1 - lambda_init)(1 - p0), p0), and (1 - p0, p0) with one cluster.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from common.config import FedTreeConfig, LoraConfig
from common.lora import peft_config
from worker.mixed import EXTERNAL, MixedExperts, Tensors
from worker.model import LoraModel, split_param_name, to_cpu

PERSONAL = "personal"
EXPERTS = ("default", EXTERNAL, PERSONAL)  # the order of phi's entries: cluster, external, personal


class PersonalExperts(MixedExperts):
    def __init__(self, lm: LoraModel, lora: LoraConfig, lambda_init: float = 0.5, personal_init: float = 1 / 3) -> None:
        self.personal_init = personal_init
        super().__init__(lm, lora, lambda_init)  # the external adapter, phi (via _init_mix), two hooks
        model: Any = lm.model  # peft's dynamic attributes defeat nn.Module typing
        trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        model.add_adapter(PERSONAL, peft_config(lora))
        model.base_model.set_adapter(list(EXPERTS))  # (peft marks all three trainable: undone below)
        self.personal: dict[int, dict[str, torch.nn.Parameter]] = {}
        for name, param in model.named_parameters():
            if f".{PERSONAL}." in name:
                own = name.replace(f".{PERSONAL}.", ".default.")
                layer, rel = split_param_name(own) or (-1, "")
                self.personal.setdefault(layer, {})[rel] = param
                param.requires_grad_(trainable[own])  # trains where the own adapter does
            else:
                param.requires_grad_(trainable[name])
        with torch.no_grad():  # the worker's own adapter, before any cluster expert overwrites it
            for layer, named in self.personal.items():
                for rel, param in named.items():
                    param.copy_(lm.params[layer][rel])
        for layer, _, module in self.lora_modules():
            self._hooks.append(module.lora_A[PERSONAL].register_forward_hook(self._scale(layer, PERSONAL)))

    def _init_mix(self, lambda_init: float) -> None:
        p0 = self.personal_init
        phi0 = [math.log(lambda_init * (1 - p0)), math.log((1 - lambda_init) * (1 - p0)), math.log(p0)]
        device = self.lm.hardware.device
        self.phi = torch.nn.ParameterDict(
            {str(layer): torch.nn.Parameter(torch.tensor(phi0, device=device)) for layer in self.lm.params}
        )
        self.lm.model.add_module("fedtree_phi", self.phi)  # part of model.parameters(), never uploaded

    def weights(self, layer: int) -> torch.Tensor:
        """(w_c, w_e, w_p) of a layer; w_e = 0 where the layer has one cluster."""
        w = torch.softmax(self.phi[str(layer)], dim=0)
        if layer in self.pinned:
            return torch.stack((w[0] + w[1], torch.zeros((), dtype=w.dtype, device=w.device), w[2]))
        return w

    def weight(self, layer: int, adapter: str, dtype: torch.dtype) -> torch.Tensor:
        return self.weights(layer)[EXPERTS.index(adapter)].to(dtype)

    def lam(self, layer: int) -> torch.Tensor:
        return self.weights(layer)[0]

    def personal_weights(self) -> dict[int, float]:
        return {layer: float(self.weights(layer)[2].detach()) for layer in sorted(self.lm.params)}

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), **{f"personal_{layer}": w for layer, w in self.personal_weights().items()}}

    def theta_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.phi.values())

    def personal_layers(self) -> dict[int, Tensors]:
        return {layer: {n: to_cpu(p) for n, p in named.items()} for layer, named in self.personal.items()}

    @torch.no_grad()
    def load_personal(self, layers: dict[int, Tensors]) -> None:
        """Restore the personal adapter (from a checkpoint)."""
        for layer, tensors in layers.items():
            for name, tensor in tensors.items():
                self.personal[layer][name].copy_(tensor.to(self.personal[layer][name].dtype))


def mixed_experts(lm: LoraModel, lora: LoraConfig, fedtree: FedTreeConfig) -> MixedExperts:
    """The mixed model a fedtree worker switches to after warmup: with `fedtree.personal`, the
    personal expert too (the own adapter, as it stands now, becomes the personal expert)."""
    if fedtree.personal:
        return PersonalExperts(lm, lora, fedtree.lambda_init, fedtree.personal_init)
    return MixedExperts(lm, lora, fedtree.lambda_init)
