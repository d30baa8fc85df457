"""The strategy interface: what a worker pulls, what it pushes, and how pushes are combined.

A strategy is pure logic on tensors: no gRPC, no files. The round engine calls it under its
lock; the state store persists what `checkpoint_state()` returns with every closed round.

Classifier heads (`run.train.head_mode: cluster`, classification runs only) are aggregated here,
once for every strategy: a strategy only says which group a worker's head belongs to in a round
(`head_group`); `push_spec` adds the head blob (HEAD_LAYER) to its push, `accumulate_head`,
`close_heads` and `head_downloads` run coordinator/heads.py's HeadSums for that grouping, and the
checkpoint wrappers persist those sums beside the strategy's own state.

Optional features are explicit methods with a default, not attributes to probe: `tree_view`
(None: no client tree), `request_rebuild` (FailedPrecondition: nothing to rebuild), `evicted`
(an operator evicted a worker: nothing to forget by default) and `personalised` (the adapter a worker uses, as far as the coordinator can reproduce it, for
export; FailedPrecondition where part of it stays on the worker).
The worker half of every strategy is in worker/strategies/, registered under the same name.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from common.chunking import Role
from common.config import RunConfig
from common.errors import FailedPrecondition
from common.schema import HEAD_LAYER, Schema, UploadSpec
from coordinator.heads import HeadSums, is_head_key
from coordinator.robust import RobustBuffer
from coordinator.tree import ClientTree
from coordinator.tree.placement import Placement

Tensors = dict[str, torch.Tensor]
# layer -> tensors
LayerTensors = dict[int, Tensors]


@dataclass(frozen=True)
class Download:
    """One blob a worker pulls. `share_key` names the content so the engine can encode a blob
    once and stream it to every worker that gets the same one (e.g. FedIT's global adapter)."""

    layer: int
    role: Role
    share_key: str
    tensors: Tensors


EXPORT_FROM_WORKER = "export from the worker (`python -m worker export --output-dir DIR`)"


@dataclass(frozen=True)
class TreeView:
    """What a strategy with a client tree shows the operator (Admin GetTree, the phase)."""

    built: bool  # the tree and clusters exist (after warmup)
    built_round: int  # the round whose uploads built them (0: not yet)
    tree: ClientTree | None  # None where clusters come without one tree (indep)
    cuts: list[int]  # clusters per layer
    clusters: list[list[list[str]]]  # per layer, the clusters as sorted worker ids
    rebuild_pending: bool  # an operator asked for a rebuild that has not happened yet
    warmup_rounds: int  # rounds of local training before the first build
    placements: dict[str, Placement] = field(default_factory=dict)  # late joiners placed in this tree
    late_pending: dict[str, int] = field(default_factory=dict)  # late joiners in their own warmup -> rounds pushed
    late_warmup_rounds: int = 0  # rounds a late joiner trains locally before it is placed


@dataclass(frozen=True)
class PersonalAdapter:
    """A worker's adapter as one plain LoRA: layer -> tensors, at rank `rank_multiplier` x r
    (alpha scaled alike), e.g. FedTreeLoRA's mix of two experts at 2r."""

    layers: LayerTensors
    rank_multiplier: int = 1


class Strategy(ABC):
    """Base class of every aggregation strategy."""

    name: ClassVar[str]

    def __init__(self, run: RunConfig, schema: Schema, spill_dir: Path | None = None) -> None:
        self.run = run
        self.spill_dir = spill_dir
        self.schema = schema
        self.num_layers = len(schema)
        # pushes go through here into the strategy's sums: straight (mean) or buffered (robust)
        self.robust = RobustBuffer(run.robust)
        # head_mode cluster: the classifier head's label rows, averaged per head_group
        self.heads_enabled = run.train.head_mode == "cluster" and run.task == "classification"
        self.heads = HeadSums(run.robust)

    @abstractmethod
    def upload_spec(self, worker_id: str, round: int) -> UploadSpec:
        """Which tensors the worker must push after training in `round`."""

    @abstractmethod
    def downloads(self, worker_id: str, round: int) -> list[Download]:
        """The blobs the worker pulls before training in `round` (empty = keep its own)."""

    @abstractmethod
    def accumulate(self, worker_id: str, round: int, update: LayerTensors, weight: float) -> None:
        """Fold one fully validated push into the round's running sums."""

    @abstractmethod
    def close_round(self, round: int) -> None:
        """Turn the round's sums into what workers pull next round."""

    def begin_round(self, round: int, participants: dict[str, int]) -> None:  # noqa: B027 - optional hook
        """Called when a round opens with its participants and their example counts."""

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint after a closed round (flat names)."""
        return {}

    def meta(self) -> dict[str, Any]:
        """JSON-safe facts to checkpoint beside `state()` (e.g. the tree and its cuts)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:  # noqa: B027
        """Restore from `state()` and `meta()` after a coordinator restart."""

    def all_layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.schema))

    # -- optional features (explicit, with defaults) ---------------------------------------------
    def tree_view(self) -> TreeView | None:
        """The client tree and its clusters, for strategies that build one; None: no tree."""
        return None

    def request_rebuild(self, round: int) -> None:
        """Rebuild the client tree from the uploads of `round` (an operator's request)."""
        raise FailedPrecondition(f"strategy '{self.name}' has no client tree to rebuild")

    def evicted(self, worker_id: str) -> None:  # noqa: B027 - optional hook
        """An operator evicted `worker_id` for good (the engine no longer lets it push)."""

    def personalised(self, worker_id: str, round: int, metrics: Mapping[str, float]) -> PersonalAdapter:
        """The adapter `worker_id` would use in `round` as the coordinator can reproduce it, for
        export; `metrics` are those of its latest push (e.g. the lambdas it reported).
        Default: its CLUSTER downloads, when they are a whole adapter (every tensor of the schema)
        and it pulls nothing else; otherwise FailedPrecondition: the rest stays on the worker."""
        pulled = self.downloads(worker_id, round)
        if not pulled:
            raise FailedPrecondition(
                f"strategy '{self.name}' keeps no adapter for {worker_id} on the coordinator: {EXPORT_FROM_WORKER}"
            )
        other = sorted({d.role.name.lower() for d in pulled if d.role != Role.CLUSTER})
        if other:
            raise FailedPrecondition(
                f"strategy '{self.name}' mixes {worker_id}'s adapter with {', '.join(other)} experts the coordinator cannot "
                f"combine: {EXPORT_FROM_WORKER}"
            )
        layers = {d.layer: d.tensors for d in pulled}
        missing = [
            f"layer {layer} {name}"
            for layer, specs in sorted(self.schema.items())
            for name in specs
            if name not in layers.get(layer, {})
        ]
        if missing:
            raise FailedPrecondition(
                f"strategy '{self.name}' keeps only part of {worker_id}'s adapter on the coordinator ({len(missing)} tensors "
                f"stay on the worker, e.g. {missing[0]}): {EXPORT_FROM_WORKER}"
            )
        return PersonalAdapter(layers, 1)

    # -- classifier heads (head_mode cluster) ---------------------------------------------------
    def head_group(self, worker_id: str, round: int) -> str | None:
        """The group whose members' heads are averaged per label with this worker's in `round`
        (its push of `round` joins it; its pull of `round` gets the group's rows); None = its
        head is neither pushed nor pulled this round. Default: one global group, as FedIT-style
        strategies average over everyone. Names must be free of '/'."""
        return "global"

    def wants_head(self, worker_id: str, round: int) -> bool:
        return self.heads_enabled and self.head_group(worker_id, round) is not None

    def push_spec(self, worker_id: str, round: int) -> UploadSpec:
        """`upload_spec` plus the head blob (HEAD_LAYER) when the worker's head is aggregated."""
        spec = self.upload_spec(worker_id, round)
        if not self.wants_head(worker_id, round):
            return spec
        layers = spec.layers if spec.lora_a or spec.lora_b else ()
        return UploadSpec((*layers, HEAD_LAYER), spec.lora_a, spec.lora_b)

    def accumulate_head(self, worker_id: str, round: int, rows: Tensors, weight: float) -> None:
        """Fold a validated head blob (label key -> row) into its group's sums."""
        group = self.head_group(worker_id, round) if self.heads_enabled else None
        if group is not None:
            self.heads.add(worker_id, group, rows, weight)

    def close_heads(self, round: int) -> None:
        """After `close_round`: the round's head sums become what workers pull next round."""
        self.heads.close()

    def head_downloads(self, worker_id: str, round: int) -> list[Download]:
        """The head blob a worker pulls in `round`: its group's mean row of each of its labels
        that the group has (none before anyone of the group has pushed)."""
        group = self.head_group(worker_id, round) if self.heads_enabled else None
        if group is None:
            return []
        labels = self.heads.labels_of.get(worker_id)
        if labels is None:  # it never pushed a head: we do not know its labels
            return []
        rows = self.heads.rows_for(group, labels)
        if not rows:
            return []
        digest = hashlib.sha256("\n".join(labels).encode()).hexdigest()[:16]
        return [Download(HEAD_LAYER, Role.CLUSTER, f"head/{group}/{digest}", rows)]

    # -- checkpoints: the strategy's state plus the head sums ------------------------------------
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {**self.state(), **(self.heads.state() if self.heads_enabled else {})}

    def checkpoint_meta(self) -> dict[str, Any]:
        meta = self.meta()
        return {**meta, "heads": self.heads.meta()} if self.heads_enabled else meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
        """`load_state` from a checkpoint written by `checkpoint_state` / `checkpoint_meta`."""
        own = {k: t for k, t in tensors.items() if not is_head_key(k)}
        meta = dict(meta or {})
        heads = meta.pop("heads", None)
        self.load_state(own, meta)
        if self.heads_enabled:
            self.heads.load(tensors, heads)


def flatten(layers: LayerTensors, prefix: str) -> dict[str, torch.Tensor]:
    """{layer: {name: t}} -> {"prefix/layer/name": t} for checkpoints."""
    return {f"{prefix}/{layer}/{name}": t for layer, tensors in layers.items() for name, t in tensors.items()}


def unflatten(flat: dict[str, torch.Tensor], prefix: str) -> LayerTensors:
    out: LayerTensors = {}
    for key, tensor in flat.items():
        head, layer, name = key.split("/", 2)
        if head == prefix:
            out.setdefault(int(layer), {})[name] = tensor
    return out
