"""FedALT's worker side: the own LoRA plus a frozen rest-of-world LoRA, mixed per token.

Every adapted module computes  W0 x + g_own(x) * s B_o A_o x + g_row(x) * s B_r A_r x  where
(g_own, g_row) = softmax(W_g x) is a per-module linear mixer over tokens, trained locally and
never uploaded; W_g starts at zero (an even mix). The own adapter (peft "default") trains and is
uploaded; the rest-of-world adapter is the mean of the other workers' own adapters, pulled as
the EXTERNAL role and frozen. Not exportable as a plain LoRA (the mix depends on the token):
the exported adapter is the own LoRA.
"""

from __future__ import annotations

from typing import Any

import torch

from common.chunking import Role
from common.config import LoraConfig
from worker.mixed import EXTERNAL, Tensors, TwoAdapters
from worker.model import LoraModel


class RestOfWorldMixer(TwoAdapters):
    def __init__(self, lm: LoraModel, lora: LoraConfig) -> None:
        super().__init__(lm, lora)
        self.mixers = torch.nn.ModuleDict()
        self._gates: dict[str, torch.Tensor] = {}
        for _layer, name, module in self.lora_modules():
            key = name.replace(".", "_")
            mixer = torch.nn.Linear(module.in_features, 2, device=lm.hardware.device)
            torch.nn.init.zeros_(mixer.weight)
            torch.nn.init.zeros_(mixer.bias)
            self.mixers[key] = mixer
            self._hooks.append(module.register_forward_pre_hook(self._gate(key)))
            # g * B(A x) = B(g * A x) for a per-token g: scaling A's rank-r output is the same function
            # with r / out_features the elementwise work (the mixed experts do the same)
            self._hooks.append(module.lora_A["default"].register_forward_hook(self._scale(key, 0)))
            self._hooks.append(module.lora_A[EXTERNAL].register_forward_hook(self._scale(key, 1)))
        lm.model.add_module("fedalt_mixers", self.mixers)  # trained locally, never uploaded

    def _gate(self, key: str):  # type: ignore[no-untyped-def]
        def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            self._gates[key] = torch.softmax(self.mixers[key](x.to(self.mixers[key].weight.dtype)), dim=-1)

        return hook

    def _scale(self, key: str, index: int):  # type: ignore[no-untyped-def]
        def hook(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            return output * self._gates[key][..., index : index + 1].to(output.dtype)

        return hook

    def load(self, pulled: dict[int, dict[Role, Tensors]]) -> None:
        for layer in self.lm.params:
            self.load_external(layer, pulled.get(layer, {}).get(Role.EXTERNAL))
