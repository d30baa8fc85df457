"""Late joiners and departures on hand-made tensors: the placement rule, the strategy's phases for a
worker that joins after the tree is built, new branches, flat/indep, persistence and the admin view."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_fedtree_strategy import LAYERS, SCHEMA, WORKERS, A, B, by_role, planted, strategy, warm_up

from common.chunking import Role
from common.config import FedTreeConfig, RunConfig
from coordinator.admin import late_joiner_views
from coordinator.kept import MEMBERS_DIR, MemberUploads
from coordinator.spill import Uploads
from coordinator.strategies.fedtree import FedTree
from coordinator.strategies.flat import Flat
from coordinator.strategies.indep import Indep
from coordinator.tree import build_tree
from coordinator.tree.placement import Placement, choose_places, merge_distances, place_layer, place_nested, thresholds
from coordinator.tree.render import dendrogram

Update = dict[int, dict[str, torch.Tensor]]


def like(group: float, jitter: float = 0.05) -> Update:
    """A worker like group +1 ({w0, w1}) or -1 ({w2, w3}) of `planted`."""
    return {layer: {A: torch.full((2, 4), 1.5), B: torch.full((4, 2), (group + jitter) * layer)} for layer in range(LAYERS)}


def unlike() -> Update:
    return {layer: {A: torch.full((2, 4), 1.5), B: torch.full((4, 2), 9.0 * layer)} for layer in range(LAYERS)}


def join_late(s: FedTree, worker: str, update: Update, first_round: int = 3) -> int:
    """Its own warmup (late_warmup_rounds = warmup_rounds = 2: one local round, then the upload);
    returns the round after the one that placed it."""
    assert s.downloads(worker, first_round) == [] and s.upload_spec(worker, first_round).empty
    s.accumulate(worker, first_round, {}, 1.0)
    s.close_round(first_round)
    placing = first_round + 1
    assert s.downloads(worker, placing) == []  # it keeps its own adapter in its placement round too
    assert s.upload_spec(worker, placing).layers == tuple(range(LAYERS))
    s.accumulate(worker, placing, update, 1.0)
    s.close_round(placing)
    return placing + 1


# -- the rule -----------------------------------------------------------------------------------


def test_merge_distance_of_a_cluster_is_its_average_linkage_distance_to_the_nearest_other() -> None:
    D = np.array([[0, 1, 4, 6, 9], [1, 0, 5, 7, 9], [4, 5, 0, 2, 3], [6, 7, 2, 0, 3], [9, 9, 3, 3, 0]], dtype=float)
    got = merge_distances(D, np.array([0, 0, 1, 1, 2]))
    assert got == pytest.approx({0: (4 + 6 + 5 + 7) / 4, 1: 3.0, 2: 3.0})
    assert merge_distances(D, np.array([3, 3, 3, 3, 3])) == {3: math.inf}  # a trunk: nothing to merge with
    # for a cut of an average-linkage tree, the smallest of them is the distance of the next merge above the cut
    tree = build_tree(D, ["a", "b", "c", "d", "e"])
    for c in (2, 3, 4, 5):
        above = sorted(m.distance for m in tree.merges)[len(D) - c]
        assert min(merge_distances(D, tree.partition(c)).values()) == pytest.approx(above)


def test_place_layer_nearest_by_mean_distance_and_its_clusters_threshold() -> None:
    D = np.array([[0, 1, 4, 6], [1, 0, 5, 7], [4, 5, 0, 2], [6, 7, 2, 0]], dtype=float)
    labels = np.array([0, 0, 1, 1])
    limits = thresholds(D, labels, 1.0)
    assert limits == pytest.approx({0: 5.5, 1: 5.5})
    near_second = place_layer(np.array([5.0, 5.0, 1.0, 2.0]), labels, limits)
    assert (near_second.cluster, near_second.distance, near_second.new_branch) == (1, 1.5, False)
    far = place_layer(np.array([9.0, 9.0, 8.0, 8.0]), labels, limits)
    assert far.new_branch and far.nearest == 1 and far.distance == 8.0 and far.threshold == 5.5
    assert not place_layer(np.array([9.0, 9.0, 8.0, 8.0]), labels, thresholds(D, labels, None)).new_branch  # none
    assert not place_layer(np.array([9.0, 9.0, 8.0, 8.0]), labels, thresholds(D, labels, 2.0)).new_branch  # looser
    trunk = np.zeros(4, dtype=int)
    one = place_layer(np.array([50.0] * 4), trunk, thresholds(D, trunk, 1.0))
    assert one.cluster == 0 and not one.new_branch and math.isinf(one.threshold)  # a trunk is shared by all
    tie = place_layer(np.array([1.0, 1.0, 1.0, 1.0]), labels, limits)
    assert tie.cluster == 0


def test_place_nested_takes_the_path_nearest_over_all_layers_then_branches_where_too_far() -> None:
    shallow = np.array([0, 0, 1, 1])  # {a, b} | {c, d}
    deep = np.array([0, 1, 2, 3])  # every member on its own, inside its shallow cluster
    # layer 0 slightly prefers {c, d}; layer 1 strongly prefers b: the path through b wins
    d = [np.array([1.0, 1.0, 0.9, 0.9]), np.array([3.0, 0.5, 3.0, 3.0])]
    wide = [{0: 10.0, 1: 10.0}, {k: 10.0 for k in range(4)}]
    got = place_nested(d, [shallow, deep], wide)
    assert [p.cluster for p in got] == [0, 1] and not any(p.new_branch for p in got)
    assert got[0].distance == 1.0 and got[1].distance == 0.5
    # greedy from the top would have taken {c, d}: the nearest cluster of layer 0 alone
    assert place_layer(d[0], shallow, wide[0]).cluster == 1
    # too far in layer 1: its own branch from there (measured against its path's cluster)
    branched = place_nested(d, [shallow, deep], [wide[0], {0: 10.0, 1: 0.4, 2: 10.0, 3: 10.0}])
    assert [p.new_branch for p in branched] == [False, True] and branched[1].nearest == 1
    # too far already in layer 0: a branch in every deeper layer too
    top = place_nested(d, [shallow, deep], [{0: 0.5, 1: 10.0}, wide[1]])
    assert [p.new_branch for p in top] == [True, True]


def test_choose_places_nested_per_layer_and_global() -> None:
    """The three modes the strategies use: nested = place_nested, per_layer = place_layer in every
    layer on its own, global = one place on the mean over layers, repeated in every layer."""
    same = np.array([0, 0, 1, 1])  # {a, b} | {c, d} in both layers
    d = [np.array([0.2, 0.2, 1.0, 1.0]), np.array([1.0, 1.0, 0.1, 0.1])]  # layer 0 near {a, b}, layer 1 near {c, d}
    D = [np.array([[0, 0.1, 1, 1], [0.1, 0, 1, 1], [1, 1, 0, 0.1], [1, 1, 0.1, 0]], dtype=float)] * 2
    per_layer = choose_places(d, D, [same, same], 10.0, "per_layer")
    assert [p.cluster for p in per_layer] == [0, 1]
    assert per_layer == [place_layer(d_l, same, thresholds(D_l, same, 10.0)) for d_l, D_l in zip(d, D, strict=True)]
    nested = choose_places(d, D, [same, same], 10.0, "nested")
    assert nested == place_nested(d, [same, same], [thresholds(D_l, same, 10.0) for D_l in D])
    one = choose_places(d, D, [same, same], 10.0, "global")  # mean: {a, b} 0.6, {c, d} 0.55
    assert [p.cluster for p in one] == [1, 1] and one[0].distance == pytest.approx(0.55)
    assert choose_places(d, D, [same, same], 0.1, "global")[0].new_branch  # farther than 0.1 x its merge distance


# -- the strategy ---------------------------------------------------------------------------------


def test_a_late_joiner_warms_up_alone_then_lands_in_its_groups_cluster_moving_nobody() -> None:
    s = strategy()
    warm_up(s)
    before = {layer: dict(a) for layer, a in s.assignment.items()}
    experts_before = by_role(s, "w0")
    nxt = join_late(s, "late", like(+1.0))
    for layer in range(LAYERS):
        assert {w: c for w, c in s.assignment[layer].items() if w != "late"} == before[layer]  # nobody moved
        assert s.assignment[layer]["late"] == s.assignment[layer]["w0"]  # with its group, where it has its own cluster
    placement = s.placements["late"]
    assert placement.round == 4 and placement.branch_from is None and placement.distance < placement.layers[-1].threshold
    # its warmup upload shaped nothing: the members pull what they pulled before
    for key, tensors in by_role(s, "w0", nxt).items():
        torch.testing.assert_close(tensors[B], experts_before[key][B])
    # it pulls its cluster and external experts like everyone, and its pushes join its cluster
    assert by_role(s, "late", nxt).keys() == by_role(s, "w0", nxt).keys()
    deep = LAYERS - 1
    for worker in (*WORKERS, "late"):
        s.accumulate(worker, nxt, planted(worker) if worker != "late" else like(+1.0), 1.0)
    s.close_round(nxt)
    group = [planted("w0")[deep][B], planted("w1")[deep][B], like(+1.0)[deep][B]]
    torch.testing.assert_close(by_role(s, "w0", nxt + 1)[(deep, Role.CLUSTER)][B], sum(group) / 3)
    assert s.clusters()[-1] == [["late", "w0", "w1"], ["w2", "w3"]]


def test_a_late_joiner_unlike_anyone_gets_its_own_branch_and_expert() -> None:
    s = strategy()
    warm_up(s)
    nxt = join_late(s, "odd", unlike())
    placement = s.placements["odd"]
    assert placement.branch_from == 1  # layer 0 is the trunk (one cluster), shared by all
    assert s.assignment[0]["odd"] == s.assignment[0]["w0"]
    for layer in range(1, LAYERS):
        assert s.assignment[layer]["odd"] == 2 and placement.layers[layer].new_branch  # a cluster of its own
        assert placement.layers[layer].distance > placement.layers[layer].threshold
    got = by_role(s, "odd", nxt)
    deep = LAYERS - 1
    torch.testing.assert_close(got[(deep, Role.CLUSTER)][B], unlike()[deep][B])  # its own expert ...
    everyone_else = sum(planted(w)[deep][B] for w in WORKERS) / 4
    torch.testing.assert_close(got[(deep, Role.EXTERNAL)][B], everyone_else)  # ... + the external one
    assert s.clusters()[-1] == [["w0", "w1"], ["w2", "w3"], ["odd"]]
    # a second joiner like it joins its branch, not a new one
    join_late(s, "odd2", {layer: {A: t[A], B: t[B] + 0.01} for layer, t in unlike().items()}, first_round=nxt)
    assert [s.assignment[layer]["odd2"] for layer in range(LAYERS)] == [s.assignment[layer]["odd"] for layer in range(LAYERS)]
    assert s.placements["odd2"].branch_from is None


def test_late_threshold_none_always_joins_the_nearest_cluster() -> None:
    s = strategy(late_threshold=None)
    warm_up(s)
    join_late(s, "odd", unlike())
    assert s.placements["odd"].branch_from is None and s.assignment[LAYERS - 1]["odd"] == s.assignment[LAYERS - 1]["w0"]


def test_placement_nests_as_the_cuts_do() -> None:
    """A joiner nearest to w2's subgroup in a deep layer, but in w0's group above, stays in w0's branch."""
    s = strategy(tau=-1.0, late_threshold=None)
    warm_up(s)
    odd = {
        layer: {A: torch.full((2, 4), 1.5), B: torch.full((4, 2), 1.0 if layer < 2 else -1.0) * layer} for layer in range(LAYERS)
    }
    join_late(s, "x", odd)
    for layer in range(1, LAYERS):
        inside = {w for w, c in s.assignment[layer].items() if c == s.assignment[layer]["x"]}
        above = {w for w, c in s.assignment[layer - 1].items() if c == s.assignment[layer - 1]["x"]}
        assert inside <= above


def test_a_worker_that_missed_the_build_round_is_placed_at_its_next_push() -> None:
    s = strategy()
    s.accumulate("slow", 1, {}, 1.0)  # warmup round 1: it trained
    s.close_round(1)
    warm_up(s)  # round 2 (the build): it missed it
    assert s.upload_spec("slow", 3).layers == tuple(range(LAYERS))  # its warmup counts: upload at once
    s.accumulate("slow", 3, like(-1.0), 1.0)
    s.close_round(3)
    assert s.assignment[LAYERS - 1]["slow"] == s.assignment[LAYERS - 1]["w2"]


def test_late_warmup_rounds_knob_and_late_join_mean_ablation() -> None:
    s = strategy(late_warmup_rounds=3)
    warm_up(s)
    for round in (3, 4):
        assert s.upload_spec("late", round).empty
        s.accumulate("late", round, {}, 1.0)
        s.close_round(round)
    assert not s.upload_spec("late", 5).empty and "late" not in s.assignment[0]
    view = s.tree_view()
    assert view.late_pending == {"late": 2} and view.late_warmup_rounds == 3
    mean = strategy(late_join="mean")
    warm_up(mean)
    assert not mean.upload_spec("late", 3).empty and mean.downloads("late", 3)  # everyone's mean at once
    mean.accumulate("late", 3, like(1.0), 1.0)
    mean.close_round(3)
    assert "late" not in mean.assignment[0] and not mean.placements


def test_flat_places_once_the_same_cluster_in_every_layer_and_indep_per_layer() -> None:
    for cls in (Flat, Indep):
        s = cls(RunConfig(strategy=cls.name, fedtree=FedTreeConfig(warmup_rounds=2, distance_on="B", metric="euclidean")), SCHEMA)
        warm_up(s)
        join_late(s, "late", like(-1.0))
        deep = LAYERS - 1
        assert s.assignment[deep]["late"] == s.assignment[deep]["w2"], cls.name
        if cls is Flat:
            assert len({s.assignment[layer]["late"] for layer in range(LAYERS)}) == 1
        assert all(role == Role.CLUSTER for _, role in by_role(s, "late", 5))
        odd = cls(
            RunConfig(strategy=cls.name, fedtree=FedTreeConfig(warmup_rounds=2, distance_on="B", metric="euclidean")), SCHEMA
        )
        warm_up(odd)
        join_late(odd, "odd", unlike())
        assert odd.placements["odd"].layers[deep].new_branch, cls.name


def test_departures_evicted_workers_leave_placements_and_silent_clusters_keep_their_expert() -> None:
    s = strategy()
    warm_up(s)
    deep = LAYERS - 1
    kept = by_role(s, "w0")[(deep, Role.CLUSTER)][B]
    for worker in ("w0", "w1"):
        s.evicted(worker)
    for round in (3, 4):  # the group {w0, w1} is gone: only the others push
        for worker in ("w2", "w3"):
            s.accumulate(worker, round, planted(worker), 1.0)
        s.close_round(round)
    torch.testing.assert_close(by_role(s, "w0", 5)[(deep, Role.CLUSTER)][B], kept)  # for members that come back
    # the evicted members no longer count in a placement: a joiner like them is measured against w2, w3
    # only, whose one cluster leaves no cut to branch off from
    join_late(s, "late", like(+1.0), first_round=5)
    assert s.assignment[deep]["late"] == s.assignment[deep]["w2"] and math.isinf(s.placements["late"].layers[deep].threshold)
    assert set(s.meta()["departed"]) == {"w0", "w1"}


def test_rebuild_includes_placed_late_joiners() -> None:
    s = strategy(rebuild_every=3)
    warm_up(s)
    nxt = join_late(s, "late", like(+1.0))  # placed after round 4
    assert nxt == 5 and s._builds_tree(5)
    for worker in (*WORKERS, "late"):
        s.accumulate(worker, 5, planted(worker) if worker != "late" else like(+1.0), 1.0)
    s.close_round(5)
    assert s.built_round == 5 and s.tree is not None and "late" in s.tree.leaves and not s.placements


def test_head_group_keeps_its_name_when_a_joiner_is_placed() -> None:
    s = strategy()
    warm_up(s)
    before = {w: s.head_group(w, 3) for w in WORKERS}
    assert s.head_group("late", 3) is None  # its head stays local until it is placed
    join_late(s, "late", like(+1.0))
    join_late(s, "odd", unlike(), first_round=5)
    assert {w: s.head_group(w, 7) for w in WORKERS} == before
    assert s.head_group("late", 7) == before["w0"]
    assert s.head_group("odd", 7) not in before.values()


def test_placements_and_kept_uploads_survive_a_restart(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    cfg = FedTreeConfig(warmup_rounds=2, distance_on="B", metric="euclidean")
    s = FedTree(RunConfig(strategy="fedtree", fedtree=cfg), SCHEMA, spill)
    warm_up(s)
    assert not spill.exists() and len(list((tmp_path / MEMBERS_DIR / "round-00002").iterdir())) == len(WORKERS)
    join_late(s, "late", like(+1.0))
    meta, state = s.meta(), s.state()
    assert meta["members"]["dir"] == "round-00002" and sorted(meta["members"]["weights"]) == sorted([*WORKERS, "late"])
    restored = FedTree(RunConfig(strategy="fedtree", fedtree=cfg), SCHEMA, spill)
    restored.load_state(state, meta)
    assert restored.placements == s.placements and restored.assignment == s.assignment
    for key, tensors in by_role(s, "late", 5).items():
        torch.testing.assert_close(by_role(restored, "late", 5)[key][B], tensors[B])
    # the restored strategy places the next joiner against the kept uploads on disk
    join_late(restored, "odd", unlike(), first_round=5)
    assert restored.placements["odd"].branch_from == 1
    # a read-only view (no spill directory) restores the same placements without touching a file
    view = FedTree(RunConfig(strategy="fedtree", fedtree=cfg), SCHEMA, None)
    view.load_state(state, meta)
    assert view.placements == s.placements


def test_a_rebuild_keeps_the_previous_generation_of_member_uploads_only(tmp_path: Path) -> None:
    kept = MemberUploads(tmp_path / MEMBERS_DIR)
    for round in (2, 4, 6):
        build = Uploads(tmp_path / "spill")
        build.put("w0", planted("w0"), 1.0)
        kept.keep_build(round, build)
        assert len(build) == 0
    assert sorted(p.name for p in (tmp_path / MEMBERS_DIR).iterdir()) == ["round-00004", "round-00006"]
    again = MemberUploads.load(tmp_path / MEMBERS_DIR, kept.meta())
    torch.testing.assert_close(again.layer("w0", 1)[B], planted("w0")[1][B])


def test_admin_view_and_dendrogram_show_late_joiners() -> None:
    s = strategy()
    warm_up(s)
    join_late(s, "late", like(+1.0))
    join_late(s, "odd", unlike(), first_round=5)
    s.accumulate("pending", 7, {}, 1.0)
    s.close_round(7)
    views = {v.worker_id: v for v in late_joiner_views(s.tree_view())}
    assert sorted(views) == ["late", "odd", "pending"]
    tree = s.tree
    assert tree is not None
    late = views["late"]
    assert late.placed_round == 4 and late.new_branch_from == -1 and late.distance == s.placements["late"].distance
    assert late.anchor == tree.node_of(["w0", "w1"])  # hangs under its group's subtree
    odd = views["odd"]
    assert odd.new_branch_from == 1 and odd.anchor == 2 * tree.n - 2 and odd.layers[1].new_branch
    assert views["pending"].placed_round == 0 and views["pending"].warmup_rounds_done == 1
    lines = dendrogram(tree, {late.anchor: ["late"], odd.anchor: ["odd"]})
    assert lines[:3] == ["● d=5.6 (4 workers)", "┄┄ odd", "├─ ● d=0.02828 (2 workers)"]
    assert lines[3] == "│  ┄┄ late"  # under its group's subtree, beside that subtree's leaves


def test_placement_round_trips_through_json() -> None:
    s = strategy()
    warm_up(s)
    join_late(s, "odd", unlike())
    p = s.placements["odd"]
    import json

    assert Placement.from_dict(json.loads(json.dumps(p.to_dict()))) == p
