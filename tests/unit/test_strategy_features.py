"""The coordinator strategies' optional features, explicit: tree_view, request_rebuild and
personalised (export), plus FedALT's rest of world under robust.method."""

from __future__ import annotations

import pytest
import torch

from common.config import FedTreeConfig, RobustConfig, RunConfig
from common.errors import FailedPrecondition
from common.schema import TensorSpec
from coordinator.strategies import STRATEGIES, Strategy, create_strategy

A, B = "q.lora_A.weight", "q.lora_B.weight"
SCHEMA = {layer: {A: TensorSpec(A, (2, 4), "float32"), B: TensorSpec(B, (4, 2), "float32")} for layer in range(2)}
TREES = {"flat", "indep", "fedtree"}


def make(name: str, **run: object) -> Strategy:
    return create_strategy(RunConfig.model_validate({"strategy": name, **run}), SCHEMA)


def honest(k: int) -> dict[str, torch.Tensor]:
    return {A: torch.full((2, 4), 1.0 + 0.01 * k), B: torch.full((4, 2), -1.0 - 0.01 * k)}


def push_round(s: Strategy, round: int, updates: dict[str, dict[str, torch.Tensor]]) -> None:
    for worker, tensors in updates.items():
        spec = s.upload_spec(worker, round)
        wanted = {n: t for n, t in tensors.items() if spec.wants(n)}
        s.accumulate(worker, round, {layer: wanted for layer in spec.layers}, 1.0)
    s.close_round(round)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_only_tree_strategies_show_a_tree_and_rebuild(name: str) -> None:
    s = make(name, fedtree={"warmup_rounds": 1})
    view = s.tree_view()
    if name not in TREES:
        assert view is None
        with pytest.raises(FailedPrecondition, match=f"strategy '{name}' has no client tree to rebuild"):
            s.request_rebuild(2)
        return
    assert view is not None and not view.built and view.warmup_rounds == 1 and view.clusters == []
    s.request_rebuild(1)
    assert s.tree_view().rebuild_pending  # type: ignore[union-attr]
    sign = {"w0": 1.0, "w1": 1.0, "w2": -1.0, "w3": -1.0}
    push_round(s, 1, {w: {n: t * sign[w] for n, t in honest(i).items()} for i, w in enumerate(sign)})
    view = s.tree_view()
    assert view is not None and view.built and view.built_round == 1 and not view.rebuild_pending
    assert len(view.cuts) == len(view.clusters) == 2
    assert sorted(w for group in view.clusters[0] for w in group) == ["w0", "w1", "w2", "w3"]
    assert (view.tree is None) == (name == "indep")


def test_export_gives_a_whole_adapter_or_says_to_export_from_the_worker() -> None:
    fedit = make("fedit")
    push_round(fedit, 1, {"w0": honest(0), "w1": honest(2)})
    adapter = fedit.personalised("w0", 2, {})
    assert adapter.rank_multiplier == 1 and sorted(adapter.layers) == [0, 1]
    torch.testing.assert_close(adapter.layers[1][A], torch.full((2, 4), 1.01))
    for name, why in (("fedsa", "only part"), ("ffa", "only part"), ("fedper", "only part"), ("local", "keeps no adapter")):
        s = make(name)
        push_round(s, 1, {"w0": honest(0), "w1": honest(2)})
        with pytest.raises(FailedPrecondition, match=why) as info:
            s.personalised("w0", 2, {})
        assert "python -m worker export" in str(info.value), name
    fedalt = make("fedalt")
    push_round(fedalt, 1, {"w0": honest(0), "w1": honest(2)})
    with pytest.raises(FailedPrecondition, match="mixers that never leave the worker"):
        fedalt.personalised("w0", 2, {})


def test_fedtree_export_mixes_with_the_reported_lambdas_and_refuses_a_personal_expert() -> None:
    run = {"fedtree": FedTreeConfig(warmup_rounds=1, fixed_k=2, metric="euclidean")}
    s = make("fedtree", **run)
    sign = {"w0": 1.0, "w1": 1.0, "w2": -1.0, "w3": -1.0}
    updates = {w: {n: t * sign[w] for n, t in honest(i).items()} for i, w in enumerate(sign)}
    push_round(s, 1, updates)
    adapter = s.personalised("w0", 2, {"lambda_0": 0.25, "lambda_1": 0.75})
    assert adapter.rank_multiplier == 2 and adapter.layers[0][B].shape == (4, 4)
    cluster_b = (updates["w0"][B] + updates["w1"][B]) / 2
    torch.testing.assert_close(adapter.layers[0][B][:, :2], 0.25 * cluster_b)
    torch.testing.assert_close(adapter.layers[1][B][:, :2], 0.75 * cluster_b)
    personal = make("fedtree", fedtree=FedTreeConfig(warmup_rounds=1, fixed_k=2, personal=True, metric="euclidean"))
    push_round(personal, 1, updates)
    with pytest.raises(FailedPrecondition, match="personal expert"):
        personal.personalised("w0", 2, {})
    flat = make("flat", fedtree=FedTreeConfig(warmup_rounds=1, personal=True))  # no personal expert on flat workers
    push_round(flat, 1, updates)
    assert flat.personalised("w0", 2, {}).rank_multiplier == 1


@pytest.mark.parametrize("method", ["median", "trimmed_mean", "clip"])
def test_fedalt_rest_of_world_resists_an_outlier_under_robust_method(method: str) -> None:
    """One of eight workers pushes x100: the mean rest of world of an honest worker follows it,
    a robust one does not; the attacker's own rest of world is the honest workers' either way."""
    updates = {f"w{k}": honest(k) for k in range(7)} | {"evil": {n: t * 100 for n, t in honest(7).items()}}
    plain, robust = make("fedalt"), make("fedalt", robust=RobustConfig(method=method, trim_fraction=0.2))
    for s in (plain, robust):
        push_round(s, 1, updates)
    rest = {
        name: {(d.layer, d.role): d.tensors for d in s.downloads("w0", 2)} for name, s in (("mean", plain), ("robust", robust))
    }
    honest_mean = torch.stack([honest(k)[A] for k in range(1, 7)]).mean(0)
    for layer in (0, 1):
        ((_, role),) = [key for key in rest["mean"] if key[0] == layer]
        assert (rest["mean"][(layer, role)][A] - honest_mean).abs().max() > 10
        assert (rest["robust"][(layer, role)][A] - honest_mean).abs().max() < 0.1
    # the attacker's own rest of world (the honest ones'), and that of a worker that did not push (everyone's)
    evil = {d.layer: d.tensors for d in robust.downloads("evil", 2)}
    assert (evil[0][A] - torch.stack([honest(k)[A] for k in range(7)]).mean(0)).abs().max() < 0.1
    late = {d.layer: d.tensors for d in robust.downloads("late", 2)}
    assert (late[1][A] - honest_mean).abs().max() < 0.1
    assert robust.downloads("w0", 2)[0].tensors is robust.downloads("w0", 2)[0].tensors  # reduced once per round


def test_fedalt_rest_of_world_survives_a_coordinator_restart() -> None:
    """The coordinator checkpoints each worker's last adapter: after a restart every worker pulls
    the same rest of world (it used to pull nothing until the next round closed)."""
    before = make("fedalt")
    for i, worker in enumerate(("w0", "w1", "w2")):
        before.accumulate(worker, 1, {layer: honest(i) for layer in SCHEMA}, weight=float(i + 1))
    before.close_round(1)
    after = make("fedalt")
    after.restore(before.checkpoint_state(), before.checkpoint_meta())
    for worker in ("w0", "w1", "w2", "newcomer"):
        old = {(d.layer, d.share_key): d.tensors for d in before.downloads(worker, 2)}
        new = {(d.layer, d.share_key): d.tensors for d in after.downloads(worker, 2)}
        assert old.keys() == new.keys() and old
        for key in old:
            for name in old[key]:
                torch.testing.assert_close(new[key][name], old[key][name])
