"""Quantised frozen bases (bitsandbytes): QLoRA's 4-bit recipe and LLM.int8, where they can run.

4bit is the QLoRA recipe: NF4 weights, double quantisation of the block scales, compute in the
worker's 16-bit precision (bf16; fp16 on GPUs without bf16). Only the frozen base is quantised:
LoRA and the classifier head stay float32 (the head modules are kept out of quantisation, since
the seeded head init writes into them). bitsandbytes needs a CUDA GPU; it is an optional extra
(`pip install 'fedtree[qlora]'`), never a requirement.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch

from common.config import Quantization
from common.errors import ConfigError


def bitsandbytes_available() -> bool:
    """Is bitsandbytes importable here? (A broken install raises on import: that counts as no.)"""
    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means it cannot run here
        return False
    return True


def check_quantization(device: torch.device, quantization: Quantization) -> None:
    """ConfigError, saying what to change, where `quantization` cannot run on `device`."""
    if quantization == "none":
        return
    if device.type != "cuda":
        raise ConfigError(
            f"worker.quantization {quantization} (bitsandbytes) needs a CUDA GPU, but this worker's device is {device}: "
            "set quantization: none, or run the worker on a CUDA GPU"
        )
    if not bitsandbytes_available():
        raise ConfigError(
            f"worker.quantization {quantization} needs the bitsandbytes package, which is not importable here: "
            "pip install 'fedtree[qlora]' (or bitsandbytes), or set quantization: none"
        )


def quantization_config(quantization: Quantization, compute_dtype: torch.dtype, keep: Sequence[str] = ()) -> object | None:
    """transformers' BitsAndBytesConfig for `from_pretrained`, or None for no quantisation.

    `keep`: module names left unquantised (a classifier head); empty = transformers' default
    (the output embedding stays unquantised)."""
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    skip = list(keep) or None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )
