"""Write any worker's personalised adapter, as the coordinator knows it, as a PEFT adapter directory.

The coordinator holds what a worker pulls (cluster and external experts) and the lambdas it
reports with its pushes. The classifier head is not included: in the `frozen` and `local` head
modes it never leaves the worker, and with `cluster` the coordinator holds only the group's mean
rows, not the worker's own head (export from the worker's checkpoint for that).
Used by `python -m coordinator export` (offline, from a state directory).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from common.chunking import Role
from common.errors import FailedPrecondition, NotFound
from common.files import as_ordinary_files
from common.lora import concat_experts, peft_config
from coordinator.engine import RoundEngine

Tensors = dict[str, torch.Tensor]


def worker_layers(engine: RoundEngine, worker_id: str) -> tuple[dict[int, Tensors], int]:
    """(layer -> personalised tensors, rank multiplier) for `worker_id` after the last closed round."""
    if engine.strategy is None:
        raise FailedPrecondition("no worker has joined this run yet")
    if worker_id not in engine.workers:
        raise NotFound(f"unknown worker '{worker_id}'")
    if engine.run.strategy == "fedtree" and engine.run.fedtree.personal:
        raise FailedPrecondition(
            "this run keeps a personal expert on each worker (fedtree.personal) that the coordinator never sees: "
            "export from the worker (`python -m worker export --output-dir DIR`)"
        )
    pulled: dict[int, dict[Role, Tensors]] = {}
    for item in engine.strategy.downloads(worker_id, engine.last_closed + 1):
        pulled.setdefault(item.layer, {})[item.role] = item.tensors
    if not pulled:
        raise FailedPrecondition(f"strategy '{engine.run.strategy}' keeps no adapter for {worker_id} on the coordinator")
    mixed = any(Role.EXTERNAL in roles for roles in pulled.values())
    if not mixed:
        return {layer: roles[Role.CLUSTER] for layer, roles in pulled.items()}, 1
    lambdas = reported_lambdas(engine, worker_id)
    out: dict[int, Tensors] = {}
    for layer, roles in sorted(pulled.items()):
        cluster = roles[Role.CLUSTER]
        external = roles.get(Role.EXTERNAL)
        lam = lambdas.get(layer, 0.5) if external is not None else 1.0
        zeros = {name: torch.zeros_like(t) for name, t in cluster.items()}
        out[layer] = concat_experts(cluster, external if external is not None else zeros, lam)
    return out, 2


def lambdas_in(metrics: dict[str, float]) -> dict[int, float]:
    """Per-layer lambdas a worker reports with its push as metrics `lambda_<layer>`."""
    return {int(k.split("_", 1)[1]): v for k, v in metrics.items() if k.startswith("lambda_")}


def reported_lambdas(engine: RoundEngine, worker_id: str) -> dict[int, float]:
    """The per-layer lambdas from the worker's latest push."""
    for round in range(engine.last_closed, 0, -1):
        push = engine.store.pushes(round).get(worker_id)
        if push is not None:
            return lambdas_in(push["metrics"])
    return {}


def write_adapter(engine: RoundEngine, worker_id: str, out_dir: Path) -> Path:
    layers, mult = worker_layers(engine, worker_id)
    prefix = engine.store.get("layer_prefix") or ""
    lora = engine.run.lora
    config = peft_config(lora, mult)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    tensors = {f"{prefix}{layer}.{name}": t.contiguous() for layer, named in layers.items() for name, t in named.items()}
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    as_ordinary_files(out_dir)
    return out_dir
