"""Export a worker's personalised model as a standard PEFT adapter directory.

The LoRA tensors are the worker strategy's `personalised()` adapter: plain LoRA as it is;
FedTreeLoRA's mixed model exactly as a rank-2r (3r with a personal expert) LoRA
(worker/strategies/fedtree.py). What one LoRA cannot hold goes beside it (`export_extras`: FedALT's
rest-of-world adapter and token mixers, worker/fedalt.py).
The local classifier head goes into `modules_to_save`, so `PeftModel.from_pretrained` on the
base model reproduces the worker's logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from common.config import LoraConfig
from common.files import as_ordinary_files
from common.lora import peft_config
from worker.model import HEAD_MODULES, LOAD_LOCK, LoraModel, split_param_name
from worker.strategies import WorkerStrategy


def export_adapter(
    lm: LoraModel,
    strategy: WorkerStrategy,
    model_path: Path,
    num_labels: int,
    lora: LoraConfig,
    out_dir: Path,
    task: str = "classification",
) -> Path:
    """Write the personalised adapter (+ local head for classification) as a PEFT directory;
    a causal_lm adapter is tagged task_type CAUSAL_LM and has no head."""
    adapter = strategy.personalised()
    base: Any
    if task == "causal_lm":
        with LOAD_LOCK:
            base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        heads: list[str] = []
        config = peft_config(lora, adapter.rank_multiplier, task_type="CAUSAL_LM")
    else:
        with LOAD_LOCK:
            base = AutoModelForSequenceClassification.from_pretrained(
                model_path, num_labels=num_labels, ignore_mismatched_sizes=True
            )
        heads = [h for h in HEAD_MODULES if hasattr(base, h)]
        config = peft_config(lora, adapter.rank_multiplier, modules_to_save=heads or None)
    model: Any = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                layer, rel = split_param_name(name) or (-1, "")
                param.copy_(adapter.layers[layer][rel])
        own_head = lm.head_state()
        for head in heads:
            target = model.base_model.model.get_submodule(head).modules_to_save["default"]
            prefix = f"base_model.model.{head}."
            target.load_state_dict({k[len(prefix) :]: v for k, v in own_head.items() if k.startswith(prefix)})
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    strategy.export_extras(out_dir)
    as_ordinary_files(out_dir)  # safetensors writes 0600 files: exported adapters are ordinary files
    return out_dir
