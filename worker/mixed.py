"""FedTreeLoRA's mixed experts on a peft model.

Every adapted module computes  W0 x + s * (lam * B_c A_c x + (1 - lam) * B_e A_e x)  with
lam = sigmoid(theta_l), one theta per transformer layer shared by that layer's modules.
It is built on peft: the cluster expert is peft's "default" adapter, the external expert a
second peft adapter "external", both active; lam enters through forward hooks on the two
lora_A modules, so peft's own forward (dropout, scaling, dtype casts) is used unchanged. Scaling
the rank-r output of A (B (lam A x) = lam B A x) touches r / out_features of the elements that
scaling B's output would, which made a training step measurably cheaper (bench/worker_step.py,
docs/BENCHMARKS.md).
Only the cluster expert and theta train; the external expert is frozen.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from common.chunking import Role
from common.config import LoraConfig
from common.lora import peft_config
from worker.model import LoraModel, split_param_name, to_cpu

EXTERNAL = "external"
Tensors = dict[str, torch.Tensor]


class TwoAdapters:
    """The worker's own adapter (peft "default", trainable as before) plus a frozen second peft
    adapter "external", both active. Subclasses decide how the two outputs are weighted."""

    def __init__(self, lm: LoraModel, lora: LoraConfig) -> None:
        self.lm = lm
        model: Any = lm.model  # peft's dynamic attributes defeat nn.Module typing
        trainable = {name: p.requires_grad for name, p in lm.model.named_parameters()}
        model.add_adapter(EXTERNAL, peft_config(lora))
        model.base_model.set_adapter(["default", EXTERNAL])  # (peft marks both trainable: undone below)
        self.external: dict[int, dict[str, torch.nn.Parameter]] = {}
        for name, param in lm.model.named_parameters():
            if f".{EXTERNAL}." in name:
                layer, rel = split_param_name(name.replace(f".{EXTERNAL}.", ".default.")) or (-1, "")
                self.external.setdefault(layer, {})[rel] = param
                param.requires_grad_(False)
            else:
                param.requires_grad_(trainable[name])
        with torch.no_grad():
            for named in self.external.values():
                for param in named.values():
                    param.zero_()
        self._hooks: list[Any] = []

    def lora_modules(self) -> list[tuple[int, str, Any]]:
        """(layer, name, peft LoRA layer) for every adapted module."""
        out = []
        for name, module in self.lm.model.named_modules():
            if hasattr(module, "lora_B") and "default" in getattr(module, "lora_B", {}):
                where = split_param_name(name + ".x")
                if where is not None:
                    out.append((where[0], name, module))
        return out

    @torch.no_grad()
    def load_external(self, layer: int, tensors: Tensors | None) -> None:
        """Set (or, with None, zero) the frozen external adapter of a layer."""
        for name, param in self.external[layer].items():
            if tensors is None:
                param.zero_()
            else:
                param.copy_(tensors[name].to(param.dtype))

    def external_layers(self) -> dict[int, Tensors]:
        return {layer: {n: to_cpu(p) for n, p in named.items()} for layer, named in self.external.items()}


class MixedExperts(TwoAdapters):
    """The cluster expert ("default") and the external expert, weighted lam and 1 - lam per layer.
    `weight(layer, adapter)` is the factor applied to an adapter's rank-r output; a subclass with
    more experts (worker/personal.py) overrides it, `lam` and `_init_mix`."""

    def __init__(self, lm: LoraModel, lora: LoraConfig, lambda_init: float = 0.5) -> None:
        super().__init__(lm, lora)
        self.theta = torch.nn.ParameterDict()
        self._init_mix(lambda_init)
        self.pinned: set[int] = set(lm.params)  # lam = 1 until an external expert arrives
        for layer, _, module in self.lora_modules():
            self._hooks.append(module.lora_A["default"].register_forward_hook(self._scale(layer, "default")))
            self._hooks.append(module.lora_A[EXTERNAL].register_forward_hook(self._scale(layer, EXTERNAL)))

    def _init_mix(self, lambda_init: float) -> None:
        """Create the mixing logits (here theta, one per layer) as parameters of the model."""
        theta0 = math.log(lambda_init / (1.0 - lambda_init))  # sigmoid(theta0) = lambda_init
        device = self.lm.hardware.device
        self.theta.update({str(layer): torch.nn.Parameter(torch.full((), theta0, device=device)) for layer in self.lm.params})
        self.lm.model.add_module("fedtree_theta", self.theta)  # part of model.parameters(), never uploaded

    def lam(self, layer: int) -> torch.Tensor:
        """The cluster expert's weight in a layer."""
        if layer in self.pinned:
            return torch.ones((), device=self.lm.hardware.device)
        return torch.sigmoid(self.theta[str(layer)])

    def lam_value(self, layer: int) -> float:
        return float(self.lam(layer).detach())

    def lams(self) -> dict[int, float]:
        return {layer: self.lam_value(layer) for layer in sorted(self.lm.params)}

    def metrics(self) -> dict[str, float]:
        """What a worker reports of its mix with each push: lambda_<layer>, the cluster expert's weight."""
        return {f"lambda_{layer}": lam for layer, lam in self.lams().items()}

    def weight(self, layer: int, adapter: str, dtype: torch.dtype) -> torch.Tensor:
        """The factor on `adapter`'s output in `layer`: lam for the cluster expert, 1 - lam for the external."""
        lam = self.lam(layer).to(dtype)
        return lam if adapter == "default" else 1 - lam

    def _scale(self, layer: int, adapter: str):  # type: ignore[no-untyped-def]
        def hook(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            return output * self.weight(layer, adapter, output.dtype)

        return hook

    def theta_parameters(self) -> list[torch.nn.Parameter]:
        """The mixing logits, trained in their own optimiser group at `fedtree.theta_lr`."""
        return list(self.theta.values())

    @torch.no_grad()
    def load(self, pulled: dict[int, dict[Role, Tensors]]) -> None:
        """Cluster experts overwrite the trainable adapter; external experts the frozen one.
        A layer without an external expert (one cluster) gets lam pinned to 1."""
        self.lm.load_layers({layer: roles[Role.CLUSTER] for layer, roles in pulled.items() if Role.CLUSTER in roles})
        for layer in self.lm.params:
            external = pulled.get(layer, {}).get(Role.EXTERNAL)
            self.load_external(layer, external or None)
            if external:
                self.pinned.discard(layer)
            else:
                self.pinned.add(layer)
