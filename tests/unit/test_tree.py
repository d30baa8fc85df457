"""Unit tests for the FedTreeLoRA core math: Gram distances, the client tree, cuts and experts."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score

from coordinator.tree import (
    ClientTree,
    ClusterSums,
    Metric,
    build_tree,
    choose_cuts,
    flat_clusters,
    global_distance,
    independent_cuts,
    layer_distances,
    silhouette,
    stack_b,
)


def brute_force(B: torch.Tensor, metric: str) -> torch.Tensor:
    """Double loop over client pairs with torch.linalg.norm (float64)."""
    L, M, N, _ = B.shape
    x = B.to(torch.float64)
    out = torch.zeros(L, N, N, dtype=torch.float64)
    for ly, i, j in itertools.product(range(L), range(N), range(N)):
        vals = []
        for m in range(M):
            a, b = x[ly, m, i], x[ly, m, j]
            if metric == "euclidean":
                vals.append(torch.linalg.norm(a - b))
            else:
                na, nb = torch.linalg.norm(a), torch.linalg.norm(b)
                if i == j:
                    vals.append(torch.tensor(0.0, dtype=torch.float64))
                elif na == 0 or nb == 0:
                    vals.append(torch.tensor(1.0, dtype=torch.float64))
                else:
                    vals.append(1.0 - torch.dot(a, b) / (na * nb))
        out[ly, i, j] = torch.stack(vals).mean()
    return out


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_gram_distances_match_brute_force(metric: Metric) -> None:
    g = torch.Generator().manual_seed(0)
    B = torch.randn(3, 2, 7, 40, generator=g, dtype=torch.float32)
    B[1, 0, 3] = 0.0  # a zero-norm row (cosine: distance 1 to others, 0 to itself)
    B[2, 1, 5] = B[2, 1, 4]  # identical rows: Gram cancellation must clamp to exactly 0
    Dl = layer_distances(B, metric=metric)
    assert Dl.shape == (3, 7, 7) and Dl.dtype == torch.float64
    torch.testing.assert_close(Dl, brute_force(B, metric), atol=1e-6, rtol=0)
    assert torch.equal(Dl, Dl.transpose(1, 2))
    assert torch.all(Dl.diagonal(dim1=1, dim2=2) == 0)
    assert torch.all(Dl >= 0)
    # chunking over layers (memory cap) gives the same numbers
    torch.testing.assert_close(layer_distances(B, metric=metric, max_chunk_bytes=1), Dl, atol=1e-12, rtol=0)
    # upper-block-triangle GEMMs (row blocks smaller than N) give the same numbers
    blocked = layer_distances(B, metric=metric, block_rows=3)
    torch.testing.assert_close(blocked, Dl, atol=1e-12, rtol=0)
    assert torch.equal(blocked, blocked.transpose(1, 2))
    torch.testing.assert_close(global_distance(Dl), Dl.mean(dim=0))


def test_stack_b_orders_layers_names_and_clients() -> None:
    def layer(k: int, base: float) -> dict[str, torch.Tensor]:
        return {
            "v.lora_B": torch.full((2, 2), 10.0 * k + base + 1),
            "q.lora_B": torch.full((2, 2), 10.0 * k + base),
            "q.lora_A": torch.ones(2, 2),
        }

    clients = [{1: layer(k, 3), 0: layer(k, 1)} for k in range(3)]
    B = stack_b(clients)
    assert B.shape == (2, 2, 3, 4)
    assert B[:, :, :, 0].tolist() == [[[1, 11, 21], [2, 12, 22]], [[3, 13, 23], [4, 14, 24]]]
    with pytest.raises(ValueError):
        stack_b([clients[0], {0: clients[1][0]}])


def planted_b(seed: int = 0, sigma: float = 0.02, modules: int = 2, dim: int = 64) -> torch.Tensor:
    """8 clients = 2 groups x 2 subgroups x 2; 6 layers. Layer 0 is pure noise, the group offset
    appears from layer 1, the subgroup offset is ~0 in layers 0-1, small in 2, dominant from 3."""
    group = (0.0, 2.0, 2.5, 3.0, 3.0, 3.0)
    sub = (0.0, 0.0, 0.3, 3.0, 3.5, 4.0)
    g = torch.Generator().manual_seed(seed)
    B = torch.zeros(len(group), modules, 8, dim)
    for ly in range(len(group)):
        for m in range(modules):
            gdir = torch.nn.functional.normalize(torch.randn(2, dim, generator=g), dim=1)
            sdir = torch.nn.functional.normalize(torch.randn(4, dim, generator=g), dim=1)
            for k in range(8):
                B[ly, m, k] = group[ly] * gdir[k // 4] + sub[ly] * sdir[k // 2] + sigma * torch.randn(dim, generator=g)
    return B


@pytest.fixture(scope="module")
def planted() -> tuple[ClientTree, torch.Tensor]:
    Dl = layer_distances(planted_b())
    tree = build_tree(global_distance(Dl), [f"w{i}" for i in range(8)])
    return tree, Dl


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_structure_cuts(seed: int) -> None:
    Dl = layer_distances(planted_b(seed))
    tree = build_tree(global_distance(Dl), [f"w{i}" for i in range(8)])
    assert tree.partition(2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # top split = the two groups
    assert tree.partition(4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    result = choose_cuts(tree, Dl, K=3, tau=0.1)
    assert result.cuts == [1, 2, 2, 4, 4, 4]
    assert all(a <= b for a, b in zip(result.cuts, result.cuts[1:]))
    assert len(result.scores) == 6 and result.scores[0][1] == pytest.approx(0.1)
    assert set(result.scores[0]) == {1, 2, 3} and set(result.scores[3]) == {2, 3, 4}


def test_cut_knobs(planted: tuple[ClientTree, torch.Tensor]) -> None:
    tree, Dl = planted
    assert choose_cuts(tree, Dl, K=1).cuts == [1] * 6  # FedIT
    assert choose_cuts(tree, Dl, tau=10.0).cuts == [1] * 6  # phi <= 1 < tau, window starts at 1
    forced = choose_cuts(tree, Dl, tau=-1.0).cuts
    assert forced[0] >= 2 and forced[1:] == [2, 2, 4, 4, 4]
    assert all(a <= b for a, b in zip(forced, forced[1:]))
    wide = choose_cuts(tree, Dl, K=8)  # the half-open window [c, min(N, c + K)) never reaches N
    assert set(wide.scores[0]) == set(range(1, 8)) and wide.cuts == [1, 2, 2, 4, 4, 4]


def test_cuts_reach_n_and_stay() -> None:
    Dl = layer_distances(torch.randn(4, 1, 3, 5, generator=torch.Generator().manual_seed(1)))
    tree = build_tree(global_distance(Dl), ["a", "b", "c"])
    res = choose_cuts(tree, Dl, K=3, tau=-5.0)
    assert all(a <= b for a, b in zip(res.cuts, res.cuts[1:])) and max(res.cuts) <= 3


def test_silhouette_matches_sklearn(planted: tuple[ClientTree, torch.Tensor]) -> None:
    tree, Dl = planted
    rng = np.random.default_rng(0)
    for ly in range(Dl.shape[0]):
        D = Dl[ly].numpy()
        for c in range(2, 8):
            labels = tree.partition(c)
            assert silhouette(D, labels) == pytest.approx(silhouette_score(D, labels, metric="precomputed"), abs=1e-12)
        labels = rng.integers(0, 3, size=8)
        labels[:3] = [0, 1, 2]
        assert silhouette(D, labels) == pytest.approx(silhouette_score(D, labels, metric="precomputed"), abs=1e-12)


def test_partitions_are_nested_and_relabelled() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(15, 4))
    D = np.linalg.norm(x[:, None] - x[None], axis=-1)
    tree = build_tree(D, [f"c{i}" for i in range(15)])
    for c in range(1, 16):
        labels = tree.partition(c)
        assert len(set(labels.tolist())) == c
        first = [labels.tolist().index(v) for v in range(c)]
        assert first == sorted(first)  # labelled in order of first appearance
    for c in range(1, 15):
        coarse, fine = tree.partition(c), tree.partition(c + 1)
        for k in range(c + 1):
            assert len(set(coarse[fine == k].tolist())) == 1


def test_small_trees() -> None:
    one = build_tree(np.zeros((1, 1)), ["solo"])
    assert one.merges == () and one.partition(1).tolist() == [0]
    assert choose_cuts(one, np.zeros((3, 1, 1))).cuts == [1, 1, 1]
    two = build_tree(np.array([[0.0, 2.0], [2.0, 0.0]]), ["a", "b"])
    assert len(two.merges) == 1 and two.merges[0].size == 2
    assert two.partition(1).tolist() == [0, 0] and two.partition(2).tolist() == [0, 1]
    d2 = np.array([[[0.0, 2.0], [2.0, 0.0]]] * 2)
    assert choose_cuts(two, d2, tau=-1).cuts == [1, 1]  # window [1, min(2, 1 + K)) = {1}
    # independent_cuts may reach c == N, where phi = 0.0 by convention (> tau = -1 here)
    assert [p.tolist() for p in independent_cuts(d2, tau=-1.0)] == [[0, 1], [0, 1]]
    assert [p.tolist() for p in independent_cuts(d2, tau=0.1)] == [[0, 0], [0, 0]]
    assert flat_clusters(np.array([[0.0, 2.0], [2.0, 0.0]])).tolist() == [0, 1]


def test_tree_round_trip(planted: tuple[ClientTree, torch.Tensor]) -> None:
    tree, _ = planted
    data = json.loads(json.dumps(tree.to_dict()))
    again = ClientTree.from_dict(data)
    assert again == tree
    for c in range(1, 9):
        assert np.array_equal(again.partition(c), tree.partition(c))


def test_flat_and_independent(planted: tuple[ClientTree, torch.Tensor]) -> None:
    _, Dl = planted
    flat = flat_clusters(global_distance(Dl))
    assert flat.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    per_layer = independent_cuts(Dl, k_range=range(1, 5), tau=0.1)
    assert len(per_layer) == 6
    assert per_layer[0].tolist() == [0] * 8  # pure noise: stay shared
    assert per_layer[1].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert per_layer[5].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_external_expert_from_sums(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(5)
    n, layers = 10, 2
    labels = [0, 1, 2, 0, 1, 2, 0, 0, 1, 2]
    weights = (torch.rand(n, generator=g) * 100 + 1).tolist()
    data = [
        {
            ly: {"A": torch.randn(4, 6, generator=g).to(dtype), "B": torch.randn(6, 4, generator=g).to(dtype)}
            for ly in range(layers)
        }
        for _ in range(n)
    ]
    sums = ClusterSums()
    for k in range(n):
        for ly in range(layers):
            sums.add(ly, labels[k], data[k][ly], weights[k])
    atol = 1e-5 if dtype == torch.float32 else 2e-2
    for ly, c in itertools.product(range(layers), range(3)):
        for members, result in (
            ([k for k in range(n) if labels[k] == c], sums.cluster_mean(ly, c)),
            ([k for k in range(n) if labels[k] != c], sums.external_mean(ly, c)),
        ):
            assert result is not None
            w = torch.tensor([weights[k] for k in members], dtype=torch.float64)
            for name in ("A", "B"):
                stacked = torch.stack([data[k][ly][name].to(torch.float64) for k in members])
                expect = (stacked * w[:, None, None]).sum(0) / w.sum()
                assert result[name].dtype == dtype
                torch.testing.assert_close(result[name].to(torch.float64), expect, atol=atol, rtol=0)
    single = ClusterSums()
    single.add(0, 7, data[0][0], 1.0)
    single.add(0, 7, data[1][0], 2.0)
    assert single.external_mean(0, 7) is None
    with pytest.raises(ValueError):
        single.add(0, 7, data[0][0], 0.0)
