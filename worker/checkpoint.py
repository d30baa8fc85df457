"""The worker's local checkpoint: everything that makes its personalised model, on its own disk.

Saved after every round (atomically): its own / cluster-expert LoRA, the external expert and
theta (FedTreeLoRA; with `fedtree.personal` the personal expert and phi instead of theta), its local head, and the facts needed to rebuild the model (run spec, labels,
base model path). `python -m worker export` rebuilds the model from it and writes a PEFT adapter.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.config import FedTreeConfig, RunConfig
from worker.mixed import MixedExperts
from worker.model import LoraModel, build_model
from worker.personal import PersonalExperts, mixed_experts

FILE = "worker-state.safetensors"


@dataclass
class Restored:
    lm: LoraModel
    mixed: MixedExperts | None
    run: RunConfig
    labels: list[str]
    model_path: Path
    round: int


def save_checkpoint(
    out_dir: Path,
    lm: LoraModel,
    mixed: MixedExperts | None,
    run: RunConfig,
    labels: list[str],
    model_path: Path,
    round: int,
    label_keys: list[str] | None = None,
) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for layer, named in lm.layers().items():
        tensors.update({f"own/{layer}/{n}": t for n, t in named.items()})
    if mixed is not None:
        for layer, named in mixed.external_layers().items():
            tensors.update({f"external/{layer}/{n}": t for n, t in named.items()})
        tensors.update({f"theta/{layer}": t.detach().clone().reshape(1) for layer, t in mixed.theta.items()})
    if isinstance(mixed, PersonalExperts):
        for layer, named in mixed.personal_layers().items():
            tensors.update({f"personal/{layer}/{n}": t for n, t in named.items()})
        tensors.update({f"phi/{layer}": t.detach().clone() for layer, t in mixed.phi.items()})
    tensors.update({f"head/{n}": t for n, t in lm.head_state().items()})
    meta = {
        "run": _run_meta(run),
        "labels": labels,
        "label_keys": label_keys if label_keys is not None else labels,
        "model_path": str(model_path),
        "round": round,
        "mixed": mixed is not None,
        "pinned": sorted(mixed.pinned) if mixed else [],
    }
    path = out_dir / FILE
    tmp = path.with_name(FILE + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"fedtree": json.dumps(meta)})
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _run_meta(run: RunConfig) -> dict[str, Any]:
    """The run spec as the checkpoint records it; the personal-expert knobs only when set, so the
    checkpoints of runs without them are the bytes they were before the option existed."""
    meta = run.model_dump(mode="json")
    defaults = FedTreeConfig().model_dump(mode="json")
    for knob in ("personal", "personal_init"):
        if meta["fedtree"][knob] == defaults[knob]:
            del meta["fedtree"][knob]
    return meta


def _read(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = out_dir / FILE
    if not path.exists():
        raise FileNotFoundError(f"no worker checkpoint at {path}: has this worker finished a round?")
    with safe_open(str(path), framework="pt") as fh:
        meta: dict[str, Any] = json.loads((fh.metadata() or {})["fedtree"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no items()
    return tensors, meta


def load_checkpoint(out_dir: Path) -> Restored:
    """Rebuild the worker's personalised model from its checkpoint alone (for `worker export`)."""
    tensors, meta = _read(out_dir)
    run = RunConfig.model_validate(meta["run"])
    model_path = Path(meta["model_path"])
    keys = meta.get("label_keys") or meta["labels"]
    lm = build_model(model_path, keys, run.lora, run.seed, run.train.train_head, run.task)
    return Restored(lm, _restore(lm, tensors, meta), run, list(meta["labels"]), model_path, int(meta["round"]))


def resume(lm: LoraModel, out_dir: Path, run: RunConfig) -> tuple[MixedExperts | None, int] | None:
    """Restore a restarted worker's own state (adapter, head, theta) if it belongs to this run."""
    if not (out_dir / FILE).exists():
        return None
    tensors, meta = _read(out_dir)
    if RunConfig.model_validate(meta["run"]) != run:
        return None
    return _restore(lm, tensors, meta), int(meta["round"])


def _restore(lm: LoraModel, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> MixedExperts | None:
    _restore_own(lm, tensors)
    if not meta["mixed"]:
        return None
    run = RunConfig.model_validate(meta["run"])
    mixed = mixed_experts(lm, run.lora, run.fedtree)
    _restore_mixed(mixed, tensors, meta)
    return mixed


def _restore_own(lm: LoraModel, tensors: dict[str, torch.Tensor]) -> None:
    own: dict[int, dict[str, torch.Tensor]] = {}
    head: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        kind, rest = key.split("/", 1)
        if kind == "own":
            layer, name = rest.split("/", 1)
            own.setdefault(int(layer), {})[name] = tensor
        elif kind == "head":
            head[rest] = tensor
    lm.load_layers(own)
    params = dict(lm.model.named_parameters())
    with torch.no_grad():
        for name, tensor in head.items():
            params[name].copy_(tensor)


def _restore_mixed(mixed: MixedExperts, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    personal: dict[int, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for key, tensor in tensors.items():
            kind, rest = key.split("/", 1)
            if kind == "external":
                layer, name = rest.split("/", 1)
                mixed.external[int(layer)][name].copy_(tensor)
            elif kind == "theta":
                mixed.theta[rest].copy_(tensor.reshape(()))
            elif kind == "personal":
                layer, name = rest.split("/", 1)
                personal.setdefault(int(layer), {})[name] = tensor
            elif kind == "phi" and isinstance(mixed, PersonalExperts):
                mixed.phi[rest].copy_(tensor)
    if isinstance(mixed, PersonalExperts):
        if not personal:
            raise ValueError("the checkpoint of a fedtree.personal run holds no personal expert")
        mixed.load_personal(personal)
    mixed.pinned = set(int(x) for x in meta["pinned"])
