"""The operator's view of a running coordinator, as domain dataclasses (common/admin_types.py).

Pure reads of an engine snapshot (`RoundEngine.snapshot`, a consistent copy taken under the
engine's lock, the strategy's client tree as its `tree_view()`) and operator actions over the
engine. The gRPC Admin servicer and the HTTP
dashboard both encode these views with common/serde.py, so the JSON of the dashboard equals
MessageToJson of the RPCs.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from common.admin_types import (
    FilePiece,
    LateJoinerView,
    LatePlacementView,
    LayerCutView,
    Phase,
    RoundView,
    StatusView,
    TreeMerge,
    TreeView,
    WorkerState,
    WorkerView,
)
from coordinator.engine import EngineSnapshot, RoundEngine
from coordinator.export import lambdas_in, write_adapter
from coordinator.file_chunks import split_files
from coordinator.strategies.base import TreeView as StrategyTree


def tree_view(snap: EngineSnapshot) -> TreeView:
    """The strategy's client tree (its `tree_view()`) with each worker's reported lambda per layer."""
    tree = snap.tree
    if tree is None or not tree.built:
        return TreeView(strategy=snap.run.strategy)
    lambdas = {info.worker_id: lambdas_in(info.last_metrics) for info in snap.workers}
    layers = tuple(
        LayerCutView(
            layer=layer,
            clusters=tuple(tuple(group) for group in groups),
            lambdas={worker: per_layer[layer] for worker, per_layer in lambdas.items() if layer in per_layer},
        )
        for layer, groups in enumerate(tree.clusters)
    )
    shape = tree.tree
    return TreeView(
        strategy=snap.run.strategy,
        built=True,
        built_round=tree.built_round,
        linkage=shape.linkage if shape is not None else "",
        leaves=tuple(shape.leaves) if shape is not None else (),
        merges=tuple(TreeMerge(m.left, m.right, m.distance, m.size) for m in shape.merges) if shape is not None else (),
        layers=layers,
        rebuild_pending=tree.rebuild_pending,
        late_joiners=late_joiner_views(tree),
    )


def late_joiner_views(tree: StrategyTree) -> tuple[LateJoinerView, ...]:
    """The placed late joiners (with the tree node of the deepest tree cluster each joined, where
    the dendrogram hangs its dashed leaf) and those still in their own warmup, by worker id."""
    out = []
    for worker, placement in tree.placements.items():
        anchor: int | None = None
        if tree.tree is not None:
            leaves = set(tree.tree.leaves)
            for layer in reversed(range(len(placement.layers))):  # the deepest layer whose cluster has tree leaves
                if placement.layers[layer].new_branch:
                    continue
                group = next((g for g in tree.clusters[layer] if worker in g), [])
                anchor = tree.tree.node_of(w for w in group if w in leaves)
                if anchor is not None:
                    break
            if anchor is None:  # a branch of its own from the top: it hangs under the root
                anchor = 2 * tree.tree.n - 2
        branch = placement.branch_from
        out.append(
            LateJoinerView(
                worker_id=worker,
                placed_round=placement.round,
                distance=placement.distance,
                new_branch_from=-1 if branch is None else branch,
                anchor=-1 if anchor is None else anchor,
                late_warmup_rounds=tree.late_warmup_rounds,
                layers=tuple(
                    LatePlacementView(layer, p.cluster, p.distance, p.threshold, p.new_branch)
                    for layer, p in enumerate(placement.layers)
                ),
            )
        )
    for worker, done in tree.late_pending.items():
        out.append(LateJoinerView(worker_id=worker, warmup_rounds_done=done, late_warmup_rounds=tree.late_warmup_rounds))
    return tuple(sorted(out, key=lambda view: view.worker_id))


def worker_views(snap: EngineSnapshot) -> tuple[WorkerView, ...]:
    """Every known worker, in one state: what it last said it does (pulling, evaluating, training,
    pushing, idle), or lost / evicted as the coordinator knows; `activity` is that state's name."""
    out = []
    for info in snap.workers:
        state = WorkerState[info.activity.upper()] if info.activity.upper() in WorkerState.__members__ else WorkerState.IDLE
        out.append(
            WorkerView(
                worker_id=info.worker_id,
                address=info.address,
                state=state,
                activity=state.name.lower(),
                last_heartbeat_unix=info.last_seen,
                rounds_done=info.rounds_done,
                bytes_sent=info.bytes_sent,
                bytes_received=info.bytes_received,
                last_metrics=dict(info.last_metrics),
                num_train_examples=info.num_train_examples,
            )
        )
    return tuple(out)


def phase(snap: EngineSnapshot) -> Phase:
    if snap.done:
        return Phase.DONE
    if snap.paused:
        return Phase.PAUSED
    cur = snap.current
    if cur is None:
        return Phase.WAITING
    if cur.evaluating:
        return Phase.EVALUATING
    warmup = snap.tree.warmup_rounds if snap.tree is not None else 0
    return Phase.WARMUP if cur.round <= warmup else Phase.TRAINING


def status_view(snap: EngineSnapshot) -> StatusView:
    base = StatusView(
        run_id=snap.run_id,
        strategy=snap.run.strategy,
        phase=phase(snap),
        last_closed_round=snap.last_closed,
        rounds=snap.run.rounds,
        workers=len(snap.workers),
    )
    cur = snap.current
    if cur is None:
        return base
    quorum = len(cur.participants) if snap.run.quorum is None else min(snap.run.quorum, len(cur.participants))
    return replace(
        base,
        current_round=cur.round,
        quorum=quorum,
        pushes=len(cur.pushed),
        deadline_unix=cur.deadline,
        remaining_s=snap.remaining_s,
    )


def round_views(
    rounds: list[dict[str, Any]], evaluations: dict[int, dict[str, dict[str, float]]], metric: str = "accuracy"
) -> tuple[RoundView, ...]:
    """Closed rounds (StateStore.rounds) with the evaluations reported after each (StateStore.evaluations);
    `metric` is the run's main one (accuracy; rouge1 for causal_lm), each worker's value of it kept apart."""
    out = []
    for r in rounds:
        per_worker = evaluations.get(r["round"], {})
        names = sorted({k for m in per_worker.values() for k in m})
        out.append(
            RoundView(
                round=r["round"],
                participants=tuple(r["participants"]),
                started_unix=r["started_at"],
                closed_unix=r["closed_at"],
                bytes=r["bytes"],
                pushes=r["pushes"],
                mean_metrics={name: statistics.fmean(m[name] for m in per_worker.values() if name in m) for name in names},
                accuracy={worker: m["accuracy"] for worker, m in per_worker.items() if "accuracy" in m},
                metric=metric,
                metric_per_worker={worker: m[metric] for worker, m in per_worker.items() if metric in m},
            )
        )
    return tuple(out)


class AdminView:
    def __init__(self, engine: RoundEngine) -> None:
        self.engine = engine

    # -- reads -----------------------------------------------------------------------------
    def tree(self) -> TreeView:
        return tree_view(self.engine.snapshot())

    def workers(self) -> tuple[WorkerView, ...]:
        return worker_views(self.engine.snapshot())

    def status(self) -> StatusView:
        return status_view(self.engine.snapshot())

    def rounds(self) -> tuple[RoundView, ...]:
        store = self.engine.store
        metric = "rouge1" if self.engine.run.task == "causal_lm" else "accuracy"
        return round_views(store.rounds(), store.evaluations(), metric)

    def export(self, worker_id: str) -> Iterator[FilePiece]:
        """The worker's personalised adapter as PEFT files (written from copies of the engine's tensors)."""
        with tempfile.TemporaryDirectory(prefix="fedtree-export-") as tmp:
            write_adapter(self.engine, worker_id, Path(tmp))
            files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
            blobs = [(p.relative_to(tmp).as_posix(), p.read_bytes()) for p in files]
        yield from split_files(blobs)  # each piece carries its file's sha256 (coordinator/file_chunks.py)

    # -- actions ---------------------------------------------------------------------------
    def evict(self, worker_id: str) -> None:
        self.engine.evict(worker_id)

    def pause(self, paused: bool) -> None:
        self.engine.set_paused(paused)

    def rebuild(self) -> int:
        return self.engine.request_rebuild()
