"""The fedtree strategy on hand-made tensors: phases, what is shared with whom, persistence."""

from __future__ import annotations

from collections.abc import Callable

import torch

from common.chunking import Role
from common.config import FedTreeConfig, RunConfig
from common.schema import TensorSpec
from coordinator.strategies.fedit import FedIT
from coordinator.strategies.fedtree import FedTree

A, B = "q.lora_A.weight", "q.lora_B.weight"
LAYERS = 3
WORKERS = ["w0", "w1", "w2", "w3"]
SCHEMA = {layer: {A: TensorSpec(A, (2, 4), "float32"), B: TensorSpec(B, (4, 2), "float32")} for layer in range(LAYERS)}


def planted(worker: str) -> dict[int, dict[str, torch.Tensor]]:
    """Groups {w0,w1} and {w2,w3}: identical in layer 0, separated more and more with depth."""
    group = 1.0 if worker in ("w0", "w1") else -1.0
    jitter = 0.01 * (WORKERS.index(worker) + 1)
    return {
        layer: {A: torch.full((2, 4), float(WORKERS.index(worker))), B: torch.full((4, 2), (group + jitter) * layer)}
        for layer in range(LAYERS)
    }


def strategy(**knobs: object) -> FedTree:
    cfg = FedTreeConfig(**{"warmup_rounds": 2, "distance_on": "B", "metric": "euclidean", **knobs})  # type: ignore[arg-type]  # planted in B's size
    return FedTree(RunConfig(strategy="fedtree", fedtree=cfg), SCHEMA)


def warm_up(
    s: FedTree,
    weights: dict[str, float] | None = None,
    update: Callable[[str], dict[int, dict[str, torch.Tensor]]] = planted,
) -> None:
    """Every worker's last warmup upload (round 2) is `update(worker)`; the round closes and the tree is built."""
    for worker in WORKERS:
        s.accumulate(worker, 2, update(worker), (weights or {}).get(worker, 1.0))
    s.close_round(2)


def by_role(s: FedTree, worker: str, round: int = 3) -> dict[tuple[int, Role], dict[str, torch.Tensor]]:
    return {(d.layer, d.role): d.tensors for d in s.downloads(worker, round)}


def test_warmup_is_local_then_everything_is_uploaded() -> None:
    s = strategy()
    assert s.upload_spec("w0", 1).empty and s.downloads("w0", 1) == []
    assert s.upload_spec("w0", 2).layers == (0, 1, 2)
    warm_up(s)
    assert s.downloads("w0", 2) == []  # the experts are pulled from round 3 on
    assert s.tree is not None and s.cuts[0] == 1 and s.cuts[-1] == 2
    assert s.clusters()[-1] == [["w0", "w1"], ["w2", "w3"]]


def test_cluster_and_external_experts_are_weighted_means() -> None:
    s = strategy()
    weights = {"w0": 1.0, "w1": 3.0, "w2": 2.0, "w3": 2.0}
    warm_up(s, weights)
    got = by_role(s, "w0")
    deep = LAYERS - 1
    ups = {w: planted(w)[deep] for w in WORKERS}
    cluster = {n: (ups["w0"][n] * 1 + ups["w1"][n] * 3) / 4 for n in (A, B)}
    external = {n: (ups["w2"][n] * 2 + ups["w3"][n] * 2) / 4 for n in (A, B)}
    for n in (A, B):
        torch.testing.assert_close(got[(deep, Role.CLUSTER)][n], cluster[n])
        torch.testing.assert_close(got[(deep, Role.EXTERNAL)][n], external[n])
    # layer 0 has one cluster: everyone's mean, no external expert
    assert (0, Role.EXTERNAL) not in got
    everyone = sum(planted(w)[0][B] * weights[w] for w in WORKERS) / 8
    torch.testing.assert_close(got[(0, Role.CLUSTER)][B], everyone)


def test_window_one_is_fedit() -> None:
    tree, fedit = strategy(window=1), FedIT(RunConfig(), SCHEMA)
    warm_up(tree)
    for worker in WORKERS:
        fedit.accumulate(worker, 1, planted(worker), 1.0)
    fedit.close_round(1)
    assert tree.cuts == [1] * LAYERS
    expected = {d.layer: d.tensors for d in fedit.downloads("w0", 2)}
    for worker in WORKERS:
        got = by_role(tree, worker)
        assert all(role == Role.CLUSTER for _, role in got)
        for layer in range(LAYERS):
            for n in (A, B):
                torch.testing.assert_close(got[(layer, Role.CLUSTER)][n], expected[layer][n])


def test_large_tau_keeps_one_cluster_and_negative_tau_splits() -> None:
    big = strategy(tau=10.0)
    warm_up(big)
    assert big.cuts == [1] * LAYERS
    low = strategy(tau=-1.0)
    warm_up(low)
    assert low.cuts[0] >= 2 and low.cuts == sorted(low.cuts)


def test_tree_rounds_aggregate_per_cluster_and_keep_silent_clusters() -> None:
    s = strategy()
    warm_up(s)
    before = by_role(s, "w2")
    # round 3: only the first group pushes new cluster experts
    for worker in ("w0", "w1"):
        s.accumulate(worker, 3, {layer: {A: torch.ones(2, 4), B: torch.full((4, 2), 5.0)} for layer in range(LAYERS)}, 1.0)
    s.close_round(3)
    deep = LAYERS - 1
    torch.testing.assert_close(by_role(s, "w0", 4)[(deep, Role.CLUSTER)][B], torch.full((4, 2), 5.0))
    torch.testing.assert_close(by_role(s, "w2", 4)[(deep, Role.CLUSTER)][B], before[(deep, Role.CLUSTER)][B])
    torch.testing.assert_close(by_role(s, "w2", 4)[(deep, Role.EXTERNAL)][B], torch.full((4, 2), 5.0))


def test_fixed_k_and_cluster_only() -> None:
    fixed = strategy(fixed_k=2)
    warm_up(fixed)
    assert fixed.cuts == [2] * LAYERS
    only = strategy(cluster_only=True)
    warm_up(only)
    assert all(role == Role.CLUSTER for _, role in by_role(only, "w0"))


def test_state_and_meta_round_trip() -> None:
    s = strategy()
    warm_up(s, {"w0": 1.0, "w1": 2.0, "w2": 3.0, "w3": 4.0})
    restored = strategy()
    restored.load_state(s.state(), s.meta())
    assert restored.cuts == s.cuts and restored.tree == s.tree and restored.clusters() == s.clusters()
    for worker in WORKERS:
        a, b = by_role(s, worker), by_role(restored, worker)
        assert a.keys() == b.keys()
        for key in a:
            for n in (A, B):
                torch.testing.assert_close(a[key][n], b[key][n])


def test_late_joiner_gets_everyones_mean_with_late_join_mean() -> None:
    """The behaviour before placement existed, kept as the ablation `late_join: mean`
    (placement: tests/unit/test_late_join_rules.py)."""
    s = strategy(late_join="mean")
    warm_up(s)
    got = by_role(s, "newcomer")
    assert all(role == Role.CLUSTER for _, role in got)
    everyone = sum(planted(w)[2][B] for w in WORKERS) / 4
    torch.testing.assert_close(got[(2, Role.CLUSTER)][B], everyone)


def test_rebuild_every_rebuilds_from_that_rounds_uploads() -> None:
    s = strategy(rebuild_every=2)
    warm_up(s)
    assert s.built_round == 2 and not s._builds_tree(3) and s._builds_tree(4)
    flipped = {"w0": "w2", "w1": "w3", "w2": "w0", "w3": "w1"}  # swap who looks like whom
    for round in (3, 4):
        for worker in WORKERS:
            s.accumulate(worker, round, planted(flipped[worker]), 1.0)
        s.close_round(round)
    assert s.built_round == 4
    assert s.clusters()[-1] == [["w0", "w1"], ["w2", "w3"]]
    deep = LAYERS - 1
    torch.testing.assert_close(
        by_role(s, "w0", 5)[(deep, Role.CLUSTER)][B], (planted("w2")[deep][B] + planted("w3")[deep][B]) / 2
    )


def test_tree_build_from_spilled_uploads_matches_memory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    in_memory = strategy()
    spilled = FedTree(RunConfig(strategy="fedtree", fedtree=in_memory.cfg), SCHEMA, tmp_path / "spill")
    warm_up(in_memory)
    for worker in WORKERS:
        spilled.accumulate(worker, 2, planted(worker), 1.0)
    assert len(list((tmp_path / "spill").glob("*.safetensors"))) == len(WORKERS)  # on disk, not in memory
    spilled.close_round(2)
    assert not (tmp_path / "spill").exists()  # cleared with the round
    assert spilled.clusters() == in_memory.clusters() and spilled.cuts == in_memory.cuts
    for worker in WORKERS:
        for key, tensors in by_role(in_memory, worker).items():
            for name, t in tensors.items():
                torch.testing.assert_close(by_role(spilled, worker)[key][name], t)


def test_distance_on_a_groups_by_the_input_side() -> None:
    """B groups the workers {w0,w1} | {w2,w3}, A groups them {w0,w3} | {w1,w2}: the tree follows
    the factor `distance_on` names."""

    def with_a(worker: str) -> dict[int, dict[str, torch.Tensor]]:
        layers = planted(worker)
        a_group = 0.0 if worker in ("w0", "w3") else 5.0  # A groups {w0,w3} | {w1,w2}
        return {layer: {A: torch.full((2, 4), a_group + 0.01 * WORKERS.index(worker)), B: t[B]} for layer, t in layers.items()}

    for factor, expected in (("B", [["w0", "w1"], ["w2", "w3"]]), ("A", [["w0", "w3"], ["w1", "w2"]])):
        s = strategy(distance_on=factor, fixed_k=2)
        warm_up(s, update=with_a)
        assert s.clusters()[-1] == expected, factor


def test_span_metric_groups_workers_whose_b_writes_into_the_same_directions() -> None:
    """w0 and w1 push B along the same two directions with opposite signs (one task, two skews),
    w2 and w3 along two others: euclidean on B pairs each worker with the other task's worker of
    its sign, the span distance pairs the tasks."""
    e = torch.eye(4)
    task = {
        "w0": e[:, :2],
        "w1": -e[:, :2] * torch.tensor([2.0, 0.5]),
        "w2": e[:, 2:],
        "w3": -e[:, 2:] * torch.tensor([0.5, 2.0]),
    }

    def update(worker: str) -> dict[int, dict[str, torch.Tensor]]:
        sign = torch.full((4, 2), 0.9 if worker in ("w0", "w2") else -0.9)  # shared by the workers of one sign
        return {layer: {A: torch.ones(2, 4), B: task[worker] + sign} for layer in range(LAYERS)}

    for metric, expected in (("euclidean", [["w0", "w2"], ["w1", "w3"]]), ("span", [["w0", "w1"], ["w2", "w3"]])):
        s = strategy(metric=metric, fixed_k=2)
        warm_up(s, update=update)
        assert s.clusters()[-1] == expected, metric
