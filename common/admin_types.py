"""Domain dataclasses of the operator's view of a coordinator (the Admin API and the dashboard).

coordinator/admin.py builds them from an engine snapshot; common/serde.py encodes them into the
fedtree.v1 Admin messages, so the gRPC API and the dashboard's JSON are one encoding of one view.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class WorkerState(enum.IntEnum):
    """Values match the proto enum fedtree.v1.WorkerState."""

    JOINED = 1
    TRAINING = 2
    IDLE = 3
    LOST = 4
    EVICTED = 5
    PULLING = 6
    EVALUATING = 7
    PUSHING = 8


class Phase(enum.IntEnum):
    """Values match the proto enum fedtree.v1.Phase."""

    WAITING = 1  # waiting for min_workers
    WARMUP = 2
    TRAINING = 3  # rounds with aggregation (FedTreeLoRA: tree rounds)
    EVALUATING = 4
    DONE = 5
    PAUSED = 6


@dataclass(frozen=True)
class TreeMerge:
    """One merge of the client tree (scipy linkage semantics: ids < leaves are leaves, N + i is merge i)."""

    left: int
    right: int
    distance: float
    size: int


@dataclass(frozen=True)
class LayerCutView:
    """One layer's clusters (worker ids) and the lambda each worker last reported for it."""

    layer: int
    clusters: tuple[tuple[str, ...], ...]
    lambdas: dict[str, float] = field(default_factory=dict)

    @property
    def cluster_count(self) -> int:
        return len(self.clusters)


@dataclass(frozen=True)
class LatePlacementView:
    """Where a late joiner went in one layer."""

    layer: int
    cluster: int  # the cluster it joined, or its own new branch's id
    distance: float  # mean distance to the members of its nearest cluster (the one joined unless new_branch)
    threshold: float  # late_threshold x the merge distance of its cluster at the cut; inf: no new branch possible here
    new_branch: bool


@dataclass(frozen=True)
class LateJoinerView:
    """A worker that joined after the tree was built: placed in it, or still in its own warmup."""

    worker_id: str
    placed_round: int = 0  # the round whose upload placed it; 0: still in its own warmup
    distance: float = 0.0  # to the cluster it joined in the deepest layer (its nearest one where it branched off)
    new_branch_from: int = -1  # the shallowest layer where it has a branch of its own; -1: none
    anchor: int = -1  # tree node (leaf id < leaves, N + i merge i) of the deepest tree cluster it joined; -1: none
    warmup_rounds_done: int = 0  # rounds of its own warmup pushed (while not placed)
    late_warmup_rounds: int = 0  # rounds of its own warmup before it is placed
    layers: tuple[LatePlacementView, ...] = ()


@dataclass(frozen=True)
class TreeView:
    """The client tree of a clustering strategy; `built` is False until it is built (and always
    for strategies without one)."""

    strategy: str
    built: bool = False
    built_round: int = 0
    linkage: str = ""
    leaves: tuple[str, ...] = ()  # leaf i is worker leaves[i]
    merges: tuple[TreeMerge, ...] = ()
    layers: tuple[LayerCutView, ...] = ()
    rebuild_pending: bool = False
    late_joiners: tuple[LateJoinerView, ...] = ()  # in worker id order


@dataclass(frozen=True)
class WorkerView:
    worker_id: str
    address: str
    state: WorkerState
    activity: str
    last_heartbeat_unix: float
    rounds_done: int
    bytes_sent: int
    bytes_received: int
    last_metrics: dict[str, float]
    num_train_examples: int


@dataclass(frozen=True)
class StatusView:
    run_id: str
    strategy: str
    phase: Phase
    last_closed_round: int
    rounds: int
    workers: int
    current_round: int = 0  # 0 when no round is open
    quorum: int = 0  # pushes that close the current round
    pushes: int = 0  # pushes received in the current round
    deadline_unix: float = 0.0  # 0 when no round is open
    remaining_s: float | None = None  # estimated time left in the open round; None = no estimate yet


@dataclass(frozen=True)
class RoundView:
    """A closed round: its facts, the mean of each evaluation metric and each worker's accuracy
    reported for the model after it."""

    round: int
    participants: tuple[str, ...]
    started_unix: float
    closed_unix: float
    bytes: int
    pushes: int
    mean_metrics: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    metric: str = "accuracy"  # the run's main metric (rouge1 for causal_lm) ...
    metric_per_worker: dict[str, float] = field(default_factory=dict)  # ... and each worker's value of it

    @property
    def duration_s(self) -> float:
        return self.closed_unix - self.started_unix


@dataclass(frozen=True)
class FilePiece:
    """A piece of one file of an exported PEFT adapter directory."""

    path: str  # relative to the adapter directory
    index: int
    total: int
    data: bytes
    digest: bytes  # sha256 of the whole file (checked by the receiver, coordinator/file_chunks.py)
