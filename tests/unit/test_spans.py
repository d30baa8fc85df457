"""The span distance (coordinator/tree/spans.py): subspaces, not matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coordinator.tree import build_tree
from coordinator.tree.client_distance import client_layer_distances
from coordinator.tree.spans import span_basis, span_layer_distances

D_OUT, R = 48, 4


def _is_b(name: str) -> bool:
    return "lora_B" in name


def _orthonormal(d: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return q


def _layer(b: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"q.lora_B": b.float(), "q.lora_A": torch.ones(R, 8)}


def test_basis_is_orthonormal_and_spans_the_columns_or_rows() -> None:
    b = torch.randn(D_OUT, R, dtype=torch.float64)
    q = span_basis(b, rows=False)
    assert q.shape == (D_OUT, R)
    torch.testing.assert_close(q.T @ q, torch.eye(R, dtype=torch.float64))
    torch.testing.assert_close(q @ (q.T @ b), b)  # b lies in the span
    assert span_basis(b.T, rows=True).shape == (D_OUT, R)


def test_rank_counts_only_directions_above_the_tolerance() -> None:
    b = torch.zeros(D_OUT, R)
    b[:, 0] = 1.0
    b[:, 1] = 2.0  # parallel to column 0
    assert span_basis(b, rows=False).shape == (D_OUT, 1)
    assert span_basis(torch.zeros(D_OUT, R), rows=False).shape == (D_OUT, 0)


def test_non_finite_factor_is_refused() -> None:
    b = torch.randn(D_OUT, R)
    b[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        span_basis(b, rows=False)


def test_blind_to_sign_scale_and_lora_gauge_but_not_to_the_subspace() -> None:
    """A task's two skew groups push B along the same directions with other signs and weights:
    the same span. Another task writes into other directions."""
    task1, task2 = _orthonormal(D_OUT, R, 1), _orthonormal(D_OUT, R, 2)
    mix = torch.tensor([[2.0, 0, 0, 0], [0, -0.5, 0, 0], [0, 0, 3, 0], [0, 0, 0, -1]], dtype=torch.float64)
    gauge = _orthonormal(R, R, 3)
    clients = [task1, -task1 @ mix, task1 @ gauge * 7.0, task2, task2 @ mix]
    D = span_layer_distances([_layer(c) for c in clients], _is_b, rows=False)
    assert D.shape == (5, 5) and np.allclose(D, D.T) and np.all(np.diag(D) == 0)
    same = [D[0, 1], D[0, 2], D[1, 2], D[3, 4]]
    other = [D[i, j] for i in range(3) for j in (3, 4)]
    assert max(same) < 1e-6 and min(other) == pytest.approx(1.0)
    tree = build_tree(D, [f"c{i}" for i in range(5)], "average")
    assert list(tree.partition(2)) in ([0, 0, 0, 1, 1], [1, 1, 1, 0, 0])
    # the euclidean distance between the matrices sees the sign flip: client 1 is farther from 0 than task 2's client 3
    flat = [c.reshape(-1) for c in clients]
    assert torch.dist(flat[0], flat[1]) > torch.dist(flat[0], flat[3])


def test_each_layer_is_rescaled_to_the_closest_and_farthest_pair() -> None:
    base = _orthonormal(D_OUT, R, 4)
    tilt = _orthonormal(D_OUT, R, 5)
    clients = [base, base + 0.1 * tilt, base + 0.5 * tilt, tilt]
    D = span_layer_distances([_layer(c) for c in clients], _is_b, rows=False)
    off = D[~np.eye(4, dtype=bool)]
    assert off.min() == pytest.approx(0.0) and off.max() == pytest.approx(1.0)
    assert D[0, 1] < D[0, 2] < D[0, 3]


def test_two_clients_and_equal_pairs_are_at_distance_one() -> None:
    a, b = _orthonormal(D_OUT, R, 6), _orthonormal(D_OUT, R, 7)
    assert span_layer_distances([_layer(a), _layer(b)], _is_b, rows=False)[0, 1] == 1.0
    assert span_layer_distances([_layer(a)], _is_b, rows=False).tolist() == [[0.0]]


def test_mismatched_clients_are_refused() -> None:
    a = _layer(_orthonormal(D_OUT, R, 8))
    with pytest.raises(ValueError, match="shape"):
        span_layer_distances([a, _layer(torch.randn(D_OUT + 1, R))], _is_b, rows=False)
    with pytest.raises(ValueError, match="holds"):
        span_layer_distances([a, {"k.lora_B": torch.randn(D_OUT, R)}], _is_b, rows=False)
    with pytest.raises(ValueError, match="filter"):
        span_layer_distances([a], lambda n: False, rows=False)


def test_client_layer_distances_compares_the_named_factor_under_the_named_metric() -> None:
    """span on B pairs the clients whose B columns span the same directions whatever their signs;
    euclidean on B pairs them by sign; distance_on A looks at A only."""
    e = torch.eye(4)
    b = [e[:, :1], -3 * e[:, :1], e[:, 1:2], -3 * e[:, 1:2]]
    a = [torch.full((1, 4), v) for v in (0.0, 5.0, 0.0, 5.0)]
    layer_of = [{"q.lora_A.weight": a_i, "q.lora_B.weight": b_i} for a_i, b_i in zip(a, b, strict=True)]
    span = client_layer_distances(layer_of, "span", "B")
    assert span[0, 1] == pytest.approx(0.0) and span[0, 2] == pytest.approx(1.0)
    euclid = client_layer_distances(layer_of, "euclidean", "B")
    assert euclid[0, 1] > euclid[0, 2]  # -3 e0 is farther from e0 than e1 is
    on_a = client_layer_distances(layer_of, "euclidean", "A")
    assert on_a[0, 2] == pytest.approx(0.0) and on_a[0, 1] == pytest.approx(10.0)
