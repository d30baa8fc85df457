"""One place that turns fedtree's LoraConfig into peft's."""

from __future__ import annotations

from typing import Any

from peft import LoraConfig as PeftLoraConfig

from common.config import LoraConfig


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
