"""Each baseline's aggregation rule on hand-made tensors: what is shared, with whom, what stays local."""

from __future__ import annotations

import torch

from common.chunking import Role
from common.config import FedTreeConfig, RunConfig
from common.schema import TensorSpec
from coordinator.strategies import STRATEGIES, create_strategy

A, B = "q.lora_A.weight", "q.lora_B.weight"
LAYERS = 4
SCHEMA = {layer: {A: TensorSpec(A, (2, 3), "float32"), B: TensorSpec(B, (3, 2), "float32")} for layer in range(LAYERS)}


def update(value: float, layers: range | tuple[int, ...] = tuple(range(LAYERS)), names: tuple[str, ...] = (A, B)):
    shapes = {A: (2, 3), B: (3, 2)}
    return {layer: {n: torch.full(shapes[n], value + layer) for n in names} for layer in layers}


def make(name: str, **run: object):
    return create_strategy(RunConfig(strategy=name, **run), SCHEMA)  # type: ignore[arg-type]


def pulled(strategy, worker: str, round: int) -> dict[tuple[int, Role], dict[str, torch.Tensor]]:
    return {(d.layer, d.role): d.tensors for d in strategy.downloads(worker, round)}


def test_every_documented_strategy_is_registered_with_a_docstring() -> None:
    assert set(STRATEGIES) >= {"local", "fedit", "ffa", "fedsa", "fedper", "fedalt", "flat", "indep", "fedtree"}
    for cls in STRATEGIES.values():
        doc = (cls.__module__ and __import__(cls.__module__, fromlist=["_"]).__doc__) or ""
        assert "Trains" in doc and "Uploads" in doc and "Uses" in doc, cls.name


def test_ffa_shares_only_b() -> None:
    s = make("ffa")
    spec = s.upload_spec("w", 1)
    assert spec.lora_b and not spec.lora_a and spec.layers == tuple(range(LAYERS))
    s.accumulate("w0", 1, update(1.0, names=(B,)), 1.0)
    s.accumulate("w1", 1, update(3.0, names=(B,)), 3.0)
    s.close_round(1)
    got = pulled(s, "w0", 2)
    assert set(got[(0, Role.CLUSTER)]) == {B}  # A is never sent: it stays at the shared init
    torch.testing.assert_close(got[(2, Role.CLUSTER)][B], torch.full((3, 2), (1 * 3.0 + 3 * 5.0) / 4))


def test_fedsa_shares_only_a() -> None:
    s = make("fedsa")
    spec = s.upload_spec("w", 1)
    assert spec.lora_a and not spec.lora_b
    s.accumulate("w0", 1, update(0.0, names=(A,)), 1.0)
    s.accumulate("w1", 1, update(2.0, names=(A,)), 1.0)
    s.close_round(1)
    got = pulled(s, "w1", 2)
    assert set(got[(1, Role.CLUSTER)]) == {A}  # B stays local
    torch.testing.assert_close(got[(1, Role.CLUSTER)][A], torch.full((2, 3), 2.0))


def test_fedper_shares_shallow_layers_only() -> None:
    s = make("fedper")
    assert s.upload_spec("w", 1).layers == (0, 1)  # default L/2
    assert make("fedper", fedper_shared_layers=3).upload_spec("w", 1).layers == (0, 1, 2)
    s.accumulate("w0", 1, update(1.0, layers=(0, 1)), 1.0)
    s.accumulate("w1", 1, update(3.0, layers=(0, 1)), 1.0)
    s.close_round(1)
    assert sorted(layer for layer, _ in pulled(s, "w0", 2)) == [0, 1]


def test_fedalt_sends_the_rest_of_world_mean_and_never_the_own_adapter() -> None:
    s = make("fedalt")
    assert s.downloads("w0", 1) == []
    for worker, value, weight in (("w0", 0.0, 1.0), ("w1", 2.0, 1.0), ("w2", 4.0, 2.0)):
        s.accumulate(worker, 1, update(value), weight)
    s.close_round(1)
    got = pulled(s, "w0", 2)
    assert all(role == Role.EXTERNAL for _, role in got)
    torch.testing.assert_close(got[(0, Role.EXTERNAL)][A], torch.full((2, 3), (2.0 * 1 + 4.0 * 2) / 3))
    torch.testing.assert_close(pulled(s, "w2", 2)[(0, Role.EXTERNAL)][B], torch.full((3, 2), 1.0))
    # a worker that did not push last round gets everyone's mean
    torch.testing.assert_close(pulled(s, "late", 2)[(0, Role.EXTERNAL)][A], torch.full((2, 3), (0 + 2 + 8) / 4))


def planted(worker: str) -> dict[int, dict[str, torch.Tensor]]:
    """Groups {w0,w1} / {w2,w3}, separated in every layer (in A and in B), the sub-pairs never."""
    sign = 1.0 if worker in ("w0", "w1") else -1.0
    noise = 0.01 * int(worker[1])
    values = {layer: sign * (layer + 1) + noise for layer in range(LAYERS)}
    return {layer: {A: torch.full((2, 3), v), B: torch.full((3, 2), v)} for layer, v in values.items()}


def warm(name: str) -> object:
    s = make(name, fedtree=FedTreeConfig(warmup_rounds=1, metric="euclidean"))  # planted in magnitude, not direction
    for w in ("w0", "w1", "w2", "w3"):
        s.accumulate(w, 1, planted(w), 1.0)
    s.close_round(1)
    return s


def test_flat_uses_one_clustering_in_every_layer_and_no_external() -> None:
    s = warm("flat")
    assert s.clusters() == [[["w0", "w1"], ["w2", "w3"]]] * LAYERS
    got = pulled(s, "w0", 2)
    assert all(role == Role.CLUSTER for _, role in got)
    torch.testing.assert_close(got[(3, Role.CLUSTER)][B], torch.full((3, 2), 4.005))


def test_indep_clusters_each_layer_on_its_own() -> None:
    s = warm("indep")
    assert s.tree is None and len(s.cuts) == LAYERS
    assert all(groups == [["w0", "w1"], ["w2", "w3"]] for groups in s.clusters())
    assert all(role == Role.CLUSTER for _, role in pulled(s, "w3", 2))
