"""The operator's view: engine snapshots, the views built from them (coordinator/admin.py) and
their protobuf encoding (common/serde.py)."""

from __future__ import annotations

import pytest
from engine_harness import DEADLINE, T0, Harness
from google.protobuf.json_format import MessageToJson
from test_fedtree_strategy import strategy, warm_up

from common import serde
from common.admin_types import (
    FilePiece,
    LayerCutView,
    Phase,
    RoundView,
    StatusView,
    TreeMerge,
    TreeView,
    WorkerState,
    WorkerView,
)
from common.config import RunConfig
from coordinator.admin import phase, round_views, status_view, tree_view, worker_views
from coordinator.engine import EngineSnapshot, RoundInfo, WorkerInfo
from coordinator.strategies.base import TreeView as StrategyTreeView
from coordinator.tree import ClientTree, Merge
from proto.fedtree.v1 import admin_pb2 as apb

# -- snapshots ----------------------------------------------------------------------------------


def test_a_snapshot_is_a_copy(started: Harness) -> None:
    h = started
    h.push("A", 1, 1.0, 1)
    snap = h.engine.snapshot()
    assert [w.worker_id for w in snap.workers] == ["A", "B"] and snap.run_id == h.engine.run_id
    assert snap.current is not None and snap.current.pushed == {"A": "A-1"} and snap.tree is None  # fedit: no tree
    snap.workers[0].last_metrics["loss"] = 99.0
    snap.current.pushed["B"] = "forged"
    snap.current.participants.clear()
    assert h.engine.workers["A"].last_metrics == {"loss": 1.0}
    assert h.engine.current is not None and h.engine.current.pushed == {"A": "A-1"} and len(h.engine.current.participants) == 2


def test_the_snapshot_carries_the_strategys_tree_view(h: Harness) -> None:
    assert h.engine.snapshot().tree is None  # no worker yet: no strategy
    h.join("A")
    assert h.engine.snapshot().tree is None  # fedit builds no tree
    s = strategy()
    assert s.tree_view().built is False
    warm_up(s)
    h.engine.strategy = s
    snap = h.engine.snapshot()
    assert snap.tree == s.tree_view() and snap.tree is not None and snap.tree.built and snap.tree.built_round == 2


# -- views built from a snapshot ----------------------------------------------------------------


def test_status_and_workers_while_a_round_is_open(started: Harness) -> None:
    h = started
    h.push("A", 1, 1.0, 1)
    status = status_view(h.engine.snapshot())
    assert status == StatusView(
        run_id=h.engine.run_id,
        strategy="fedit",
        phase=Phase.TRAINING,
        last_closed_round=0,
        rounds=2,
        workers=2,
        current_round=1,
        quorum=2,
        pushes=1,
        deadline_unix=T0 + DEADLINE,
    )
    workers = {w.worker_id: w for w in worker_views(h.engine.snapshot())}
    assert workers["A"].state == WorkerState.IDLE and workers["B"].state == WorkerState.JOINED  # B has not said more
    assert workers["A"] == WorkerView("A", "", WorkerState.IDLE, "idle", T0, 1, 0, 100, {"loss": 1.0}, 10)
    h.engine.evict("B")
    assert {w.worker_id: w.state for w in worker_views(h.engine.snapshot())}["B"] == WorkerState.EVICTED


@pytest.mark.parametrize(
    ("said", "state"),
    [
        ("evaluating", WorkerState.EVALUATING),
        ("training", WorkerState.TRAINING),
        ("pulling", WorkerState.PULLING),
        ("pushing", WorkerState.PUSHING),
        ("idle", WorkerState.IDLE),
        ("starting", WorkerState.JOINED),
        ("lost", WorkerState.JOINED),  # not a worker's to say: ignored
        ("dancing", WorkerState.JOINED),  # unknown: ignored
    ],
)
def test_state_and_activity_are_one(started: Harness, said: str, state: WorkerState) -> None:
    """The state enum is what the worker last said it does (or lost/evicted): the two never disagree."""
    started.engine.heartbeat("B", said)
    view = {w.worker_id: w for w in worker_views(started.engine.snapshot())}["B"]
    assert view.state == state and view.activity == state.name.lower()


def test_phases(h: Harness) -> None:
    h.join("A")
    assert phase(h.engine.snapshot()) == Phase.WAITING
    assert status_view(h.engine.snapshot()).current_round == 0
    h.engine.set_paused(True)
    assert phase(h.engine.snapshot()) == Phase.PAUSED
    h.engine.set_paused(False)
    h.join("B")
    assert phase(h.engine.snapshot()) == Phase.TRAINING
    for rnd in (1, 2):
        h.push("A", rnd, 1.0, 1)
        h.push("B", rnd, 5.0, 3)
    assert phase(h.engine.snapshot()) == Phase.EVALUATING
    for w in ("A", "B"):
        h.engine.report_metrics(w, 2, {"accuracy": 0.5})
    assert phase(h.engine.snapshot()) == Phase.DONE


def _snapshot(
    tree: StrategyTreeView | None, round: int = 3, metrics: dict[str, dict[str, float]] | None = None
) -> EngineSnapshot:
    run = RunConfig.model_validate({"strategy": "fedtree", "rounds": 5, "fedtree": {"warmup_rounds": 2}})
    workers = tuple(WorkerInfo(w, 10, T0, "training", last_metrics=(metrics or {}).get(w, {})) for w in ("a", "b", "c"))
    current = RoundInfo(round, T0, T0 + DEADLINE, {"a": 10, "b": 10, "c": 10})
    return EngineSnapshot("run", run, round - 1, False, False, workers, current, tree)


TREE = ClientTree(("a", "b", "c"), (Merge(0, 1, 0.5, 2), Merge(2, 3, 1.5, 3)), "average")
BUILT = StrategyTreeView(
    built=True,
    built_round=2,
    tree=TREE,
    cuts=[1, 2],
    clusters=[[["a", "b", "c"]], [["a", "b"], ["c"]]],
    rebuild_pending=True,
    warmup_rounds=2,
)
UNBUILT = StrategyTreeView(False, 0, None, [], [], False, warmup_rounds=2)


def test_tree_view_of_a_built_tree_with_reported_lambdas() -> None:
    snap = _snapshot(BUILT, metrics={"a": {"lambda_1": 0.25, "accuracy": 0.9}, "c": {"lambda_0": 0.75, "lambda_1": 0.5}})
    assert tree_view(snap) == TreeView(
        strategy="fedtree",
        built=True,
        built_round=2,
        linkage="average",
        leaves=("a", "b", "c"),
        merges=(TreeMerge(0, 1, 0.5, 2), TreeMerge(2, 3, 1.5, 3)),
        layers=(
            LayerCutView(0, (("a", "b", "c"),), {"c": 0.75}),
            LayerCutView(1, (("a", "b"), ("c",)), {"a": 0.25, "c": 0.5}),
        ),
        rebuild_pending=True,
    )
    assert phase(snap) == Phase.TRAINING and phase(_snapshot(BUILT, round=2)) == Phase.WARMUP


def test_tree_view_before_the_tree_or_without_one() -> None:
    assert tree_view(_snapshot(UNBUILT, round=1)) == TreeView(strategy="fedtree")
    assert phase(_snapshot(UNBUILT, round=1)) == Phase.WARMUP
    assert tree_view(_snapshot(None)) == TreeView(strategy="fedtree")
    assert phase(_snapshot(None, round=1)) == Phase.TRAINING  # no tree: no warmup phase


def test_round_views_average_each_metric_over_the_workers_that_reported_it() -> None:
    rounds = [{"round": 1, "participants": ["a", "b"], "started_at": 10.0, "closed_at": 12.5, "pushes": 2, "bytes": 300}]
    evals = {1: {"a": {"accuracy": 0.5, "rouge1": 0.25}, "b": {"accuracy": 1.0}}}
    (view,) = round_views(rounds, evals)
    acc = {"a": 0.5, "b": 1.0}
    assert view == RoundView(1, ("a", "b"), 10.0, 12.5, 300, 2, {"accuracy": 0.75, "rouge1": 0.25}, acc, "accuracy", acc)
    assert view.duration_s == 2.5
    (generation,) = round_views(rounds, evals, metric="rouge1")  # a causal_lm run's chart plots ROUGE-1
    assert generation.metric == "rouge1" and generation.metric_per_worker == {"a": 0.25}
    assert round_views(rounds, {})[0].mean_metrics == {}


# -- encoding: common/serde.py --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "proto", "prefix"), [(WorkerState, apb.WorkerState, "WORKER_STATE_"), (Phase, apb.Phase, "PHASE_")]
)
def test_enum_values_match_the_proto(domain: type[WorkerState] | type[Phase], proto: object, prefix: str) -> None:
    names = {prefix + member.name: member.value for member in domain}
    assert names == {n: v for n, v in proto.items() if v != 0}  # type: ignore[attr-defined]


def test_tree_to_proto() -> None:
    view = tree_view(_snapshot(BUILT, metrics={"c": {"lambda_1": 0.5}}))
    expected = apb.GetTreeResponse(
        strategy="fedtree",
        built=True,
        built_round=2,
        linkage="average",
        leaves=["a", "b", "c"],
        merges=[apb.Merge(left=0, right=1, distance=0.5, size=2), apb.Merge(left=2, right=3, distance=1.5, size=3)],
        layers=[
            apb.LayerCut(layer=0, cluster_count=1, clusters=[apb.Cluster(workers=["a", "b", "c"])]),
            apb.LayerCut(
                layer=1,
                cluster_count=2,
                clusters=[apb.Cluster(workers=["a", "b"]), apb.Cluster(workers=["c"])],
                lambdas={"c": 0.5},
            ),
        ],
        rebuild_pending=True,
    )
    assert serde.tree_to_proto(view) == expected
    # not built: nothing but the strategy goes on the wire
    assert serde.tree_to_proto(TreeView("fedit")).SerializeToString() == apb.GetTreeResponse(strategy="fedit").SerializeToString()


def test_workers_status_rounds_and_file_pieces_to_proto() -> None:
    worker = WorkerView("a", "ipv4:1.2.3.4:5", WorkerState.TRAINING, "training", 12.5, 3, 400, 500, {"accuracy": 0.5}, 7)
    assert serde.workers_to_proto([worker]) == apb.ListWorkersResponse(
        workers=[
            apb.WorkerInfo(
                worker_id="a",
                address="ipv4:1.2.3.4:5",
                state=apb.WORKER_STATE_TRAINING,
                activity="training",
                last_heartbeat_unix=12.5,
                rounds_done=3,
                bytes_sent=400,
                bytes_received=500,
                last_metrics={"accuracy": 0.5},
                num_train_examples=7,
            )
        ]
    )
    status = StatusView("r", "fedtree", Phase.WARMUP, 1, 5, 3, current_round=2, quorum=3, pushes=1, deadline_unix=99.0)
    assert serde.status_to_proto(status) == apb.GetStatusResponse(
        run_id="r",
        strategy="fedtree",
        phase=apb.PHASE_WARMUP,
        current_round=2,
        last_closed_round=1,
        rounds=5,
        quorum=3,
        pushes=1,
        deadline_unix=99.0,
        workers=3,
    )
    view = RoundView(1, ("a", "b"), 10.0, 12.5, 300, 2, {"accuracy": 0.75}, {"a": 0.5, "b": 1.0}, "accuracy", {"a": 0.5})
    assert serde.rounds_to_proto([view]) == apb.GetRoundsResponse(
        rounds=[
            apb.RoundInfo(
                round=1,
                participants=["a", "b"],
                started_unix=10.0,
                closed_unix=12.5,
                duration_s=2.5,
                bytes=300,
                pushes=2,
                mean_metrics={"accuracy": 0.75},
                accuracy={"a": 0.5, "b": 1.0},
                metric="accuracy",
                metric_per_worker={"a": 0.5},
            )
        ]
    )
    assert serde.file_piece_to_proto(FilePiece("p", 1, 2, b"x", b"d" * 32)) == apb.FileChunk(
        path="p", index=1, total=2, data=b"x", sha256=b"d" * 32
    )


def test_status_json_golden() -> None:
    """The dashboard's /api/status body for a view: MessageToJson of its encoding, field for field."""
    status = StatusView("r", "fedit", Phase.DONE, 2, 2, 2)
    assert MessageToJson(serde.status_to_proto(status), indent=None) == (
        '{"runId": "r", "strategy": "fedit", "phase": "PHASE_DONE", "lastClosedRound": 2, "rounds": 2, "workers": 2}'
    )


def test_late_joiners_to_proto_and_json() -> None:
    from common.admin_types import LateJoinerView, LatePlacementView

    placed = LateJoinerView(
        worker_id="d",
        placed_round=4,
        distance=0.25,
        new_branch_from=1,
        anchor=3,
        late_warmup_rounds=2,
        layers=(LatePlacementView(0, 0, 0.5, float("inf"), False), LatePlacementView(1, 2, 0.25, 0.125, True)),
    )
    pending = LateJoinerView(worker_id="e", warmup_rounds_done=1, late_warmup_rounds=2)
    msg = serde.tree_to_proto(TreeView("fedtree", built=True, late_joiners=(placed, pending)))
    assert [j.worker_id for j in msg.late_joiners] == ["d", "e"]
    d = msg.late_joiners[0]
    assert (d.placed_round, d.distance, d.new_branch_from, d.anchor) == (4, 0.25, 1, 3)
    assert [(p.layer, p.cluster, p.new_branch) for p in d.layers] == [(0, 0, False), (1, 2, True)]
    as_json = MessageToJson(msg)
    assert '"threshold": "Infinity"' in as_json and '"warmupRoundsDone": 1' in as_json  # what the dashboard reads


def test_admin_cli_renders_late_joiners_under_their_cluster_and_the_pending_ones() -> None:
    from coordinator.admin_cli import render_tree

    tree = apb.GetTreeResponse(
        strategy="fedtree",
        built=True,
        built_round=2,
        linkage="average",
        leaves=["a", "b", "c"],
        merges=[apb.Merge(left=0, right=1, distance=0.5, size=2), apb.Merge(left=2, right=3, distance=1.5, size=3)],
        layers=[
            apb.LayerCut(layer=0, cluster_count=2, clusters=[apb.Cluster(workers=["a", "b", "d"]), apb.Cluster(workers=["c"])])
        ],
        late_joiners=[
            apb.LateJoiner(
                worker_id="d",
                placed_round=4,
                distance=0.25,
                new_branch_from=-1,
                anchor=3,
                layers=[apb.LatePlacement(layer=0, cluster=0, distance=0.25, threshold=1.0)],
            ),
            apb.LateJoiner(worker_id="e", warmup_rounds_done=1, late_warmup_rounds=2, new_branch_from=-1, anchor=-1),
        ],
    )
    lines = render_tree(tree).splitlines()
    at = lines.index("  └─ ● d=0.5 (2 workers)")
    assert lines[at + 1] == "     ┄┄ d (late, placed round 4)"  # hangs under {a, b}, the tree cluster it joined
    assert "  d: placed after round 4, distance 0.25, clusters per layer [0]" in lines
    assert "  e: in its own warmup, 1/2 rounds pushed" in lines


def test_status_estimates_the_rounds_time_left_from_the_last_round(started: Harness) -> None:
    """No estimate in round 1; then each worker still to push is expected to take as long as it
    took last round, counted from the round's opening."""
    h = started
    assert status_view(h.engine.snapshot()).remaining_s is None
    h.clock.advance(10)
    h.push("A", 1, 1.0, 1)
    h.clock.advance(20)
    h.push("B", 1, 1.0, 1)  # round 1 closes: A took 10 s, B 30 s; round 2 opens now
    h.clock.advance(5)
    assert status_view(h.engine.snapshot()).remaining_s == pytest.approx(25.0)
    h.clock.advance(7)
    h.push("A", 2, 1.0, 1)
    assert status_view(h.engine.snapshot()).remaining_s == pytest.approx(18.0)  # only B left: 30 - 12
    h.clock.advance(40)
    assert status_view(h.engine.snapshot()).remaining_s == 0.0  # late, not negative
