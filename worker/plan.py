"""`fedtree-worker --plan`: adapter size, bytes on the wire and estimated peak memory, before any
weight is loaded.

Only config.json is read: the model is built on torch's meta device (shapes, no storage), and the
modules LoRA's target_modules match give the adapter's size. The memory figures are estimates of
a training step's peak (weights + float32 LoRA/head with gradients and AdamW's two moments +
activations), not measurements: activations assume a fused attention kernel (SDPA/flash, which
keeps no s x s score matrix), and the CUDA context and allocator slack (about 0.5-1 GiB) come on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from common.config import RunConfig, WorkerConfig
from common.errors import ConfigError

# bytes per parameter of a quantised linear weight: 4bit = NF4 (0.5) + 8-bit block scales per 64
# weights, double-quantised (1/64) + their float32 scales per 256 blocks; 8bit = int8 + a float32
# scale per output row (counted per weight as ~0)
QUANTISED_BYTES = {"8bit": 1.0, "4bit": 0.5 + 1 / 64 + 4 / (64 * 256)}
OPTIONS = (("fp32", "none"), ("bf16", "none"), ("fp16", "none"), ("bf16", "8bit"), ("bf16", "4bit"))
TRAINABLE_BYTES = 16  # float32 weight + gradient + AdamW's two moments
GiB = 1 << 30


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a model, read from its config on the meta device."""

    model_type: str
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    params: int  # every parameter once (tied ones once)
    quantisable: int  # weights of the Linear layers bitsandbytes would quantise
    largest_linear: int
    lora_modules: int
    lora_params: int
    head_params: int


@dataclass(frozen=True)
class MemoryEstimate:
    precision: str
    quantization: str
    weights: int
    trainable: int
    activations: int
    activations_checkpointed: int

    @property
    def peak(self) -> int:
        return self.weights + self.trainable + self.activations

    @property
    def peak_checkpointed(self) -> int:
        return self.weights + self.trainable + self.activations_checkpointed


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    """peft's rule for a list of target names: the module's name or its last dotted parts."""
    return any(name == t or name.endswith("." + t) for t in targets)


def model_shape(model_path: Path, task: str, target_modules: tuple[str, ...], rank: int, num_labels: int = 2) -> ModelShape:
    """Parameter counts of the model in `model_path` and of its LoRA adapter, from config.json only."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from worker.model import HEAD_MODULES

    if not (model_path / "config.json").exists():
        raise ConfigError(f"{model_path} is not a Hugging Face model directory (no config.json)")
    config = AutoConfig.from_pretrained(model_path, num_labels=num_labels)
    with torch.device("meta"):
        auto = AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification
        model = auto.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    quantisable, largest, lora_modules, lora_params, head = 0, 0, 0, 0, 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        is_head = any(f".{h}." in f".{name}." for h in HEAD_MODULES)
        if is_head:
            head += sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            if isinstance(module, torch.nn.Linear) and not is_head and not name.endswith("lm_head"):
                quantisable += weight.numel()
                largest = max(largest, weight.numel())
            if _matches(name, target_modules) and not is_head:
                lora_modules += 1
                lora_params += rank * (weight.shape[0] + weight.shape[1])
    if lora_modules == 0:
        raise ConfigError(f"target_modules {list(target_modules)} matched no module of {model_path}")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0))
    return ModelShape(
        model_type=str(config.model_type),
        layers=int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0)),
        hidden=hidden,
        intermediate=int(getattr(text, "intermediate_size", 0) or getattr(text, "n_inner", 0) or 4 * hidden),
        vocab=int(getattr(text, "vocab_size", 0)),
        params=params,
        quantisable=quantisable,
        largest_linear=largest,
        lora_modules=lora_modules,
        lora_params=lora_params,
        head_params=head,
    )


def estimate(
    shape: ModelShape, precision: str, quantization: str, batch: int, seq: int, task: str, train_head: bool
) -> MemoryEstimate:
    """Peak memory of one training step (micro-batch `batch` x `seq` tokens) in this setting."""
    act = 4 if precision == "fp32" else 2
    if quantization == "none":
        weights = shape.params * act
    else:  # quantised linear weights, the rest (embeddings, norms) in 16 bits, one weight dequantised at a time
        rest = shape.params - shape.quantisable
        weights = int(shape.quantisable * QUANTISED_BYTES[quantization]) + rest * 2 + shape.largest_linear * 2
    trainable = (shape.lora_params + (shape.head_params if train_head else 0)) * TRAINABLE_BYTES
    tokens = batch * seq
    # kept for the backward pass per token and block: norms, q/k/v, attention output and projections
    # (~9 hidden-sized vectors), the MLP's up/gate/activation/product (~4 intermediate-sized ones)
    block = tokens * (9 * shape.hidden + 4 * shape.intermediate) * act
    logits = tokens * shape.vocab * (act + 4 + 4) if task == "causal_lm" else 0  # logits, float32 upcast, gradient
    full = shape.layers * block + logits
    checkpointed = shape.layers * tokens * shape.hidden * act + block + logits  # block inputs + one block recomputed
    return MemoryEstimate(precision, quantization, weights, trainable, full, checkpointed)


def load_run_config(path: Path | None) -> RunConfig:
    """The run spec to plan for: a coordinator config file (its `run:` section) or a bare run
    section; None = RunConfig's defaults."""
    if path is None:
        return RunConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read run config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"run config {path} must hold a mapping")
    try:
        return RunConfig.model_validate(data.get("run", data))
    except ValueError as exc:
        raise ConfigError(f"invalid run config in {path}: {exc}") from exc


def _size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def plan(config: WorkerConfig, run: RunConfig, model_path: Path) -> str:
    """The plan's text for this worker (its precision, quantisation, checkpointing) in this run."""
    num_labels = len(config.data.labels) if config.data.labels else 2
    lora = run.lora
    shape = model_shape(model_path, run.task, lora.target_modules, lora.rank, num_labels)
    t = run.train
    adapter = shape.lora_params * 4
    wire = adapter // 2 if run.wire_dtype else adapter
    wire_name = run.wire_dtype or "float32"
    head = run.task == "classification" and t.head_mode == "cluster"
    lines = [
        f"fedtree-worker plan: {model_path} ({shape.model_type}, {run.task})",
        f"  model       {shape.layers} layers, hidden {shape.hidden}, intermediate {shape.intermediate}, vocab {shape.vocab}: "
        f"{_count(shape.params)} parameters ({_count(shape.quantisable)} in quantisable linear weights)",
        f"  LoRA        rank {lora.rank} on {', '.join(lora.target_modules)}: {shape.lora_modules} modules, "
        f"{_count(shape.lora_params)} parameters = {_size(adapter)} as float32",
        f"  wire/round  push {_size(wire)}, pull {_size(wire)} ({_size(2 * wire)} with external experts: fedtree after "
        f"warmup, fedalt) as {wire_name}" + (" + head rows" if head else ""),
        f"  training    micro-batch {t.batch_size} x {t.max_seq_length} tokens, {t.gradient_accumulation_steps} "
        f"accumulation step(s): effective batch {t.batch_size * t.gradient_accumulation_steps}; gradient checkpointing "
        + ("on" if config.train.gradient_checkpointing else "off"),
        "  estimated peak memory of a training step (add ~0.5-1 GiB for the CUDA context and allocator):",
        f"    {'':2}{'precision':<10}{'quant':<7}{'weights':>11}{'LoRA+AdamW':>12}{'activations':>13}{'peak':>11}"
        f"{'peak, ckpt':>12}",
    ]
    mine = (config.precision, config.quantization)
    for precision, quantization in dict.fromkeys((*OPTIONS, mine)):
        m = estimate(shape, precision, quantization, t.batch_size, t.max_seq_length, run.task, t.train_head)
        acts = m.activations_checkpointed if config.train.gradient_checkpointing else m.activations
        peak = m.peak_checkpointed if config.train.gradient_checkpointing else m.peak
        lines.append(
            f"    {'*' if (precision, quantization) == mine else ' ':2}{precision:<10}{quantization:<7}{_size(m.weights):>11}"
            f"{_size(m.trainable):>12}{_size(acts):>13}{_size(peak):>11}{_size(m.peak_checkpointed):>12}"
        )
    lines.append("    (* = this worker's precision and quantization; 8bit/4bit need a CUDA GPU and bitsandbytes)")
    return "\n".join(lines)
