"""One place that turns fedtree's LoraConfig into peft's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from safetensors.torch import save_file

from common.config import LoraConfig
from common.files import as_ordinary_files
from common.schema import is_lora_a


def peft_config(lora: LoraConfig, rank_multiplier: int = 1, **extra: Any) -> PeftLoraConfig:
    """peft's config for our LoRA; `rank_multiplier` widens the rank and alpha alike (alpha/r kept)."""
    return PeftLoraConfig(
        r=lora.rank * rank_multiplier,
        lora_alpha=lora.alpha * rank_multiplier,  # type: ignore[arg-type]  # peft annotates int, accepts float
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        **extra,
    )


def concat_experts(cluster: dict[str, torch.Tensor], external: dict[str, torch.Tensor], lam: float) -> dict[str, torch.Tensor]:
    """FedTreeLoRA's mix of one layer as one rank-2r LoRA: A' = [A_c ; A_e], B' = [lam B_c | (1-lam) B_e].

    B' A' x = lam B_c A_c x + (1 - lam) B_e A_e x, so with alpha doubled (alpha/r kept) it is exact."""
    return concat_weighted([(cluster, lam), (external, 1 - lam)])


def concat_weighted(experts: Sequence[tuple[dict[str, torch.Tensor], float]]) -> dict[str, torch.Tensor]:
    """A weighted sum of n LoRA experts of one layer as one rank-nr LoRA: A' = [A_1 ; ... ; A_n],
    B' = [w_1 B_1 | ... | w_n B_n], so B' A' x = sum_i w_i B_i A_i x (exact with alpha times n).
    Every expert has the tensor names of the first."""
    return {
        name: torch.cat([named[name] for named, _ in experts], dim=0)
        if is_lora_a(name)
        else torch.cat([w * named[name] for named, w in experts], dim=1)
        for name in experts[0][0]
    }


def save_lora_dir(
    layers: dict[int, dict[str, torch.Tensor]],
    lora: LoraConfig,
    prefix: str,
    out_dir: Path,
    rank_multiplier: int = 1,
    **extra: Any,
) -> Path:
    """A LoRA (layer -> name -> tensor) as a PEFT adapter directory, without building a model:
    `adapter_config.json` plus `adapter_model.safetensors` keyed `<prefix><layer>.<name>` (peft's
    saved keys; `prefix` is LoraModel.prefix, e.g. `base_model.model.bert.encoder.layer.`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_config(lora, rank_multiplier, **extra).save_pretrained(str(out_dir))
    tensors = {f"{prefix}{layer}.{name}": t.contiguous() for layer, named in layers.items() for name, t in named.items()}
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    as_ordinary_files(out_dir)  # safetensors writes 0600 files: exported adapters are ordinary files
    return out_dir
