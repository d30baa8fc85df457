"""The worker's local checkpoint: everything that makes its personalised model, on its own disk.

Saved after every round (atomically): its own LoRA (`own/<layer>/<name>`), its local head
(`head/<name>`), what its strategy keeps besides them (`WorkerStrategy.state`: e.g. FedTreeLoRA's
external expert and theta, FedALT's rest of world and mixers; see worker/strategies/), and the
facts needed to rebuild the model (run spec, labels, base model path).
`python -m worker export` rebuilds the model from it and writes a PEFT adapter.
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
from worker.model import LoraModel, build_model
from worker.strategies import WorkerStrategy, create_worker_strategy

FILE = "worker-state.safetensors"
_OWN_KEYS = ("own", "head")  # the checkpoint's own prefixes; a strategy's state uses others


@dataclass
class Restored:
    lm: LoraModel
    strategy: WorkerStrategy
    run: RunConfig
    labels: list[str]
    model_path: Path
    round: int


def save_checkpoint(
    out_dir: Path,
    lm: LoraModel,
    strategy: WorkerStrategy,
    run: RunConfig,
    labels: list[str],
    model_path: Path,
    round: int,
    label_keys: list[str] | None = None,
) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for layer, named in lm.layers().items():
        tensors.update({f"own/{layer}/{n}": t for n, t in named.items()})
    extra, extra_meta = strategy.state()
    clash = sorted(k for k in extra if k.split("/", 1)[0] in _OWN_KEYS)
    if clash:
        raise ValueError(f"strategy '{run.strategy}' state uses the checkpoint's own keys {clash[:3]}")
    tensors.update(extra)
    tensors.update({f"head/{n}": t for n, t in lm.head_state().items()})
    meta = {
        "run": _run_meta(run),
        "labels": labels,
        "label_keys": label_keys if label_keys is not None else labels,
        "model_path": str(model_path),
        "round": round,
        **extra_meta,
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
    strategy = create_worker_strategy(run)
    strategy.prepare(lm)
    _restore(lm, strategy, tensors, meta)
    return Restored(lm, strategy, run, list(meta["labels"]), model_path, int(meta["round"]))


def resume(lm: LoraModel, strategy: WorkerStrategy, out_dir: Path, run: RunConfig) -> int | None:
    """Restore a restarted worker's own state (adapter, head, its strategy's local state) if it
    belongs to this run; returns the round it was saved after (None: nothing restored).
    `strategy` is the run's, prepared on `lm`."""
    if not (out_dir / FILE).exists():
        return None
    tensors, meta = _read(out_dir)
    if RunConfig.model_validate(meta["run"]) != run:
        return None
    _restore(lm, strategy, tensors, meta)
    return int(meta["round"])


def _restore(lm: LoraModel, strategy: WorkerStrategy, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
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
    strategy.restore({k: t for k, t in tensors.items() if k.split("/", 1)[0] not in _OWN_KEYS}, meta)
