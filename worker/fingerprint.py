"""The model fingerprint: same fingerprint <=> same base model, LoRA config, seed and seeded init.

The base model's part is read from its FILES (config.json and the weight files), not from the
loaded model, and every weight is hashed as a canonical float32 view of what is stored: the
fingerprint does not depend on how a worker loads the model (device, precision, bitsandbytes
quantisation), so a bf16 GPU worker and a float32 CPU worker of one base model join one run,
and a different base model is still refused. The LoRA part hashes the seeded init, which is
drawn on the CPU in float32 on every worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from common.config import LoraConfig
from common.errors import ConfigError

# config.json keys that say how a copy was saved or which head it had, not which base model it is
VOLATILE_CONFIG_KEYS = (
    "num_labels",
    "id2label",
    "label2id",
    "_name_or_path",
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
)
# elements hashed per step, so a 1 GB embedding is never copied to float32 whole
_BLOCK = 1 << 22


def base_digest(model_path: Path, skip: Callable[[str], bool] = lambda _name: False) -> str:
    """sha256 of the model directory's config (less its volatile keys) and of every stored weight
    whose name `skip` does not reject (the head), as float32, in name order."""
    h = hashlib.sha256()
    config = json.loads((model_path / "config.json").read_text())
    for key in VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in _stored_weights(model_path):
        if skip(name):
            continue
        h.update(f"{name}:{tuple(tensor.shape)}".encode())
        _update_float32(h, tensor)
    return h.hexdigest()


def _update_float32(h: Any, tensor: torch.Tensor) -> None:
    flat = tensor.detach().reshape(-1)
    if not (flat.dtype.is_floating_point or flat.dtype.is_complex):
        h.update(str(flat.dtype).encode())
        h.update(flat.contiguous().view(torch.uint8).numpy())
        return
    for start in range(0, flat.numel(), _BLOCK):
        h.update(flat[start : start + _BLOCK].to(torch.float32).contiguous().numpy())


def weight_files(model_path: Path) -> list[Path]:
    """The weight files transformers would load, safetensors first (sharded or not), then .bin."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = model_path / index_name
        if index.exists():
            weight_map: Mapping[str, str] = json.loads(index.read_text())["weight_map"]
            return [model_path / f for f in sorted(set(weight_map.values()))]
        if (model_path / single).exists():
            return [model_path / single]
    raise ConfigError(f"{model_path} holds no model weights (model.safetensors or pytorch_model.bin, sharded or not)")


def _stored_weights(model_path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every stored weight, in name order, one file's tensors at a time."""
    files = weight_files(model_path)
    if files[0].suffix == ".safetensors":
        from safetensors import safe_open

        with contextlib.ExitStack() as stack:
            where: dict[str, Any] = {}
            for path in files:
                fh = stack.enter_context(safe_open(str(path), framework="pt"))
                where.update({name: fh for name in fh.keys()})  # noqa: SIM118 - safe_open has no items()
            for name in sorted(where):
                yield name, where[name].get_tensor(name)
        return
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    for name in sorted(state):
        yield name, state[name]


def fingerprint(base: str, lora: LoraConfig, seed: int, init: Mapping[int, Mapping[str, torch.Tensor]]) -> str:
    """sha256 of the base digest, the LoRA config, the seed and the seeded LoRA init (as float32 on the CPU)."""
    h = hashlib.sha256(base.encode())
    h.update(json.dumps(lora.model_dump(mode="json"), sort_keys=True).encode())
    h.update(str(seed).encode())
    for layer in sorted(init):
        for name in sorted(init[layer]):
            h.update(f"{layer}/{name}".encode())
            h.update(init[layer][name].detach().to("cpu", torch.float32).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
