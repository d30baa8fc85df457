"""FedALT's worker side: the own LoRA plus a frozen rest-of-world LoRA, mixed per token.

Every adapted module computes  W0 x + g_own(x) * s B_o A_o x + g_row(x) * s B_r A_r x  where
(g_own, g_row) = softmax(W_g x) is a per-module linear mixer over tokens, trained locally and
never uploaded; W_g starts at zero (an even mix). The own adapter (peft "default") trains and is
uploaded; the rest-of-world adapter is the mean of the other workers' own adapters, pulled as
the EXTERNAL role and frozen.

Export. The mix depends on the token, so no plain LoRA equals it: the exported PEFT adapter
directory holds the own LoRA (+ head) as PEFT's "default" adapter, as for plain LoRA, and beside it
- `rest_of_world/`: the frozen rest-of-world LoRA as a PEFT adapter directory of its own;
- `fedalt_mixers.safetensors`: the mixers, `<module>.weight` (2 x in_features) and `<module>.bias`
  (2) per adapted module, `<module>` its peft module path with "." written "_"
  (e.g. `base_model_model_bert_encoder_layer_0_attention_self_query`); gate 0 weighs the own
  adapter, gate 1 the rest of world.
`PeftModel.from_pretrained(base, dir)` alone gives the own adapter only (FedALT without its rest of
world); `load_exported(peft_model, dir)` adds the other two and gives the worker's model exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from common.chunking import Role
from common.config import LoraConfig
from common.lora import save_lora_dir
from worker.mixed import EXTERNAL, Tensors, TwoAdapters
from worker.model import LoraModel, split_param_name

REST_OF_WORLD = "rest_of_world"
MIXERS_FILE = "fedalt_mixers.safetensors"


def adapted_modules(model: torch.nn.Module) -> list[tuple[str, Any]]:
    """(name, peft LoRA layer) of every adapted module inside a numbered transformer layer."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if "default" in getattr(module, "lora_B", {}) and split_param_name(name + ".x") is not None
    ]


class TokenMixers(torch.nn.ModuleDict):
    """Per adapted module a Linear(in_features, 2) whose softmax weighs, per token, the own
    adapter (gate 0) and the rest of world (gate 1); keyed by module path with "." as "_"."""

    def __init__(self, modules: list[tuple[str, Any]]) -> None:
        super().__init__()
        for name, module in modules:
            # on the adapter's device (a GPU worker's), float32 like the LoRA weights
            mixer = torch.nn.Linear(module.in_features, 2, device=module.lora_A["default"].weight.device)
            torch.nn.init.zeros_(mixer.weight)
            torch.nn.init.zeros_(mixer.bias)
            self[_key(name)] = mixer
        self._gates: dict[str, torch.Tensor] = {}

    def attach(self, modules: list[tuple[str, Any]]) -> list[Any]:
        """Hook the mix into the modules (both adapters active); returns the hook handles.
        g * B(A x) = B(g * A x) for a per-token g: scaling A's rank-r output is the same function
        with r / out_features the elementwise work (the mixed experts do the same)."""
        hooks = []
        for name, module in modules:
            key = _key(name)
            hooks.append(module.register_forward_pre_hook(self._gate(key)))
            hooks.append(module.lora_A["default"].register_forward_hook(self._scale(key, 0)))
            hooks.append(module.lora_A[EXTERNAL].register_forward_hook(self._scale(key, 1)))
        return hooks

    def _gate(self, key: str):  # type: ignore[no-untyped-def]
        def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            self._gates[key] = torch.softmax(self[key](x.to(self[key].weight.dtype)), dim=-1)

        return hook

    def _scale(self, key: str, index: int):  # type: ignore[no-untyped-def]
        def hook(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            return output * self._gates[key][..., index : index + 1].to(output.dtype)

        return hook


def _key(module_name: str) -> str:
    return module_name.replace(".", "_")


class RestOfWorldMixer(TwoAdapters):
    def __init__(self, lm: LoraModel, lora: LoraConfig) -> None:
        super().__init__(lm, lora)
        modules = [(name, module) for _layer, name, module in self.lora_modules()]
        self.mixers = TokenMixers(modules)
        self._hooks.extend(self.mixers.attach(modules))
        lm.model.add_module("fedalt_mixers", self.mixers)  # trained locally, never uploaded

    def load(self, pulled: dict[int, dict[Role, Tensors]]) -> None:
        for layer in self.lm.params:
            self.load_external(layer, pulled.get(layer, {}).get(Role.EXTERNAL))

    def mixer_state(self) -> Tensors:
        """The mixers' tensors, `<module>.weight` / `<module>.bias` (as in MIXERS_FILE)."""
        return {k: t.detach().cpu().clone().contiguous() for k, t in self.mixers.state_dict().items()}

    @torch.no_grad()
    def load_mixers(self, tensors: Tensors) -> None:
        self.mixers.load_state_dict(tensors)

    def save_exported(self, out_dir: Path, lora: LoraConfig, task: str = "classification") -> list[Path]:
        """Write REST_OF_WORLD/ and MIXERS_FILE into an exported adapter directory."""
        extra: dict[str, Any] = {"task_type": "CAUSAL_LM"} if task == "causal_lm" else {}
        rest = save_lora_dir(self.external_layers(), lora, self.lm.prefix, out_dir / REST_OF_WORLD, **extra)
        mixers = out_dir / MIXERS_FILE
        save_file(self.mixer_state(), str(mixers), metadata={"format": "pt", "fedtree": "fedalt token mixers"})
        return [rest, mixers]


def load_exported(model: Any, adapter_dir: Path) -> TokenMixers:
    """Turn `PeftModel.from_pretrained(base, adapter_dir)` of a FedALT worker's export into the
    worker's model: load REST_OF_WORLD as a second, active adapter and hook in the mixers."""
    model.load_adapter(str(adapter_dir / REST_OF_WORLD), adapter_name=EXTERNAL)
    model.base_model.set_adapter(["default", EXTERNAL])
    modules = adapted_modules(model)
    mixers = TokenMixers(modules)
    mixers.load_state_dict(load_file(str(adapter_dir / MIXERS_FILE)))
    mixers.attach(modules)
    model.add_module("fedalt_mixers", mixers)
    return mixers
