"""Export a worker's personalised model as a standard PEFT adapter directory.

Plain LoRA exports as it is. FedTreeLoRA's mixed model is exactly a rank-2r LoRA:
B' = [lam B_c | (1 - lam) B_e], A' = [A_c ; A_e], with alpha doubled so that alpha/r is kept;
with a personal expert (`fedtree.personal`) a rank-3r one, B' = [w_c B_c | w_e B_e | w_p B_p],
A' = [A_c ; A_e ; A_p], alpha tripled (zero external blocks in a layer with one cluster: one
PEFT config has one rank).
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
from common.lora import concat_experts, concat_weighted, peft_config
from worker.mixed import MixedExperts
from worker.model import HEAD_MODULES, LOAD_LOCK, LoraModel, split_param_name
from worker.personal import PersonalExperts

Tensors = dict[str, torch.Tensor]


def personalised_layers(lm: LoraModel, mixed: MixedExperts | None) -> tuple[dict[int, Tensors], int]:
    """(layer -> tensors, rank multiplier): the adapter that reproduces the worker's model."""
    own = lm.layers()
    if mixed is None:
        return own, 1
    external = mixed.external_layers()
    out: dict[int, Tensors] = {}
    if isinstance(mixed, PersonalExperts):
        personal = mixed.personal_layers()
        for layer, tensors in own.items():
            w_c, w_e, w_p = (float(w) for w in mixed.weights(layer).detach())
            out[layer] = concat_weighted([(tensors, w_c), (external[layer], w_e), (personal[layer], w_p)])
        return out, 3
    for layer, tensors in own.items():
        lam = mixed.lam_value(layer)
        out[layer] = concat_experts(tensors, external[layer], lam)
    return out, 2


def export_adapter(
    lm: LoraModel,
    mixed: MixedExperts | None,
    model_path: Path,
    num_labels: int,
    lora: LoraConfig,
    out_dir: Path,
    task: str = "classification",
) -> Path:
    """Write the personalised adapter (+ local head for classification) as a PEFT directory;
    a causal_lm adapter is tagged task_type CAUSAL_LM and has no head."""
    layers, mult = personalised_layers(lm, mixed)
    base: Any
    if task == "causal_lm":
        with LOAD_LOCK:
            base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        heads: list[str] = []
        config = peft_config(lora, mult, task_type="CAUSAL_LM")
    else:
        with LOAD_LOCK:
            base = AutoModelForSequenceClassification.from_pretrained(
                model_path, num_labels=num_labels, ignore_mismatched_sizes=True
            )
        heads = [h for h in HEAD_MODULES if hasattr(base, h)]
        config = peft_config(lora, mult, modules_to_save=heads or None)
    model: Any = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                layer, rel = split_param_name(name) or (-1, "")
                param.copy_(layers[layer][rel])
        own_head = lm.head_state()
        for head in heads:
            target = model.base_model.model.get_submodule(head).modules_to_save["default"]
            prefix = f"base_model.model.{head}."
            target.load_state_dict({k[len(prefix) :]: v for k, v in own_head.items() if k.startswith(prefix)})
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    as_ordinary_files(out_dir)
    return out_dir
