"""FedALT's mixer computes W0 x + g_own(x) s B_o A_o x + g_row(x) s B_r A_r x, per token."""

from __future__ import annotations

from pathlib import Path

import torch

from common.config import LoraConfig
from worker.fedalt import RestOfWorldMixer
from worker.mixed import EXTERNAL
from worker.model import build_model


@torch.no_grad()
def test_every_adapted_module_mixes_both_adapters_per_token(tiny_model_dir: Path) -> None:
    lora = LoraConfig(rank=4, alpha=8.0)
    lm = build_model(tiny_model_dir, ("a", "b"), lora, seed=0, train_head=True)
    mixer = RestOfWorldMixer(lm, lora)
    gen = torch.Generator().manual_seed(1)
    for _layer, _name, module in mixer.lora_modules():
        for adapter in ("default", EXTERNAL):
            module.lora_A[adapter].weight.copy_(torch.randn(module.lora_A[adapter].weight.shape, generator=gen))
            module.lora_B[adapter].weight.copy_(torch.randn(module.lora_B[adapter].weight.shape, generator=gen))
    for m in mixer.mixers.values():  # a non-trivial, token-dependent mix
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
    lm.model.eval()
    scale = lora.alpha / lora.rank
    for _layer, name, module in mixer.lora_modules():
        x = torch.randn(2, 5, module.in_features, generator=gen)
        gate = torch.softmax(mixer.mixers[name.replace(".", "_")](x), dim=-1)
        expected = module.base_layer(x)
        for index, adapter in enumerate(("default", EXTERNAL)):
            delta = x @ module.lora_A[adapter].weight.T @ module.lora_B[adapter].weight.T
            expected = expected + gate[..., index : index + 1] * scale * delta
        torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-4)
