"""The global client tree and its per-layer cuts (docs/ALGORITHM.md, Procedure steps 5-6).

``build_tree`` runs agglomerative clustering (scipy ``linkage``, average by default) on the global
distance and returns a persistable ``ClientTree``; ``ClientTree.partition(c)`` cuts it into exactly
``c`` clusters with scipy ``cut_tree`` (partitions are nested). ``choose_cuts`` picks one cut per
layer, shallow to deep, never coarser than the layer below. ``independent_cuts`` and
``flat_clusters`` are the "indep" ablation and the FedLEASE-style "flat" baseline.

Silhouette convention (phi for c >= 2): the silhouette score of the partition under the LAYER
distance, computed in closed form with one matrix product (identical to
``sklearn.metrics.silhouette_score(D, labels, metric="precomputed")``, which the unit tests check).
sklearn defines it only for 2 <= c <= N - 1; for c == N (every client alone) we use phi = 0.0.
Note that step 5's half-open window [c*_{l-1}, min(N, c*_{l-1} + K)) never contains N, so for
N >= 2 ``choose_cuts`` never picks c = N (for N = 2 every cut is 1); the c == N convention matters
for ``independent_cuts`` (whose k_range may reach N) and for N = 1 (the empty window keeps N = 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from scipy.cluster.hierarchy import cut_tree
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import squareform

__all__ = [
    "ClientTree",
    "CutResult",
    "Merge",
    "build_tree",
    "choose_cuts",
    "flat_clusters",
    "independent_cuts",
    "silhouette",
]

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..c-1 in order of first appearance (deterministic across equivalent labellings)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


@dataclass(frozen=True)
class Merge:
    """One row of a scipy linkage matrix: ids < N are leaves, id N + i is the cluster of merge i."""

    left: int
    right: int
    distance: float
    size: int


@dataclass(frozen=True)
class ClientTree:
    """A binary merge tree over clients; ``leaves[i]`` is the worker id of leaf ``i``."""

    leaves: tuple[str, ...]
    merges: tuple[Merge, ...]
    linkage: str = "average"

    def __post_init__(self) -> None:
        n = len(self.leaves)
        if n == 0:
            raise ValueError("a ClientTree needs at least one leaf")
        if len(set(self.leaves)) != n:
            raise ValueError("leaf ids must be unique")
        if len(self.merges) != n - 1:
            raise ValueError(f"{n} leaves need {n - 1} merges, got {len(self.merges)}")

    @property
    def n(self) -> int:
        return len(self.leaves)

    def linkage_matrix(self) -> np.ndarray:
        """The scipy linkage matrix ``Z`` of shape (N - 1, 4)."""
        return np.array([[m.left, m.right, m.distance, m.size] for m in self.merges], dtype=np.float64).reshape(-1, 4)

    @cached_property
    def _cuts(self) -> np.ndarray:
        """All partitions at once: row ``c - 1`` holds the labels of the cut into ``c`` clusters."""
        n = self.n
        if n == 1:
            return np.zeros((1, 1), dtype=np.int64)
        full = cut_tree(self.linkage_matrix())  # (N, N): column j is the cut into N - j clusters
        table = np.empty((n, n), dtype=np.int64)
        for c in range(1, n + 1):
            labels = _first_appearance(full[:, n - c])
            if labels.max() + 1 != c:  # cut_tree is only reliable on monotone linkages
                raise ValueError(f"cut_tree returned {labels.max() + 1} clusters for c={c} ({self.linkage} linkage)")
            table[c - 1] = labels
        table.setflags(write=False)
        return table

    def partition(self, c: int) -> np.ndarray:
        """Labels 0..c-1 (first-appearance order) of the cut into exactly ``c`` clusters."""
        if not 1 <= c <= self.n:
            raise ValueError(f"c must be in [1, {self.n}], got {c}")
        return self._cuts[c - 1].copy()

    def node_of(self, leaves: Iterable[str]) -> int | None:
        """The node (a leaf id < N, or N + i for merge i) whose leaves are exactly `leaves`; None if
        no node holds exactly them (e.g. a cluster of a cut always is one)."""
        wanted = frozenset(leaves)
        if not wanted:
            return None
        sets: list[frozenset[str]] = [frozenset((leaf,)) for leaf in self.leaves]
        for merge in self.merges:
            sets.append(sets[merge.left] | sets[merge.right])
        return next((node for node, members in enumerate(sets) if members == wanted), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (lists, str, int, float) for persistence."""
        return {
            "leaves": list(self.leaves),
            "merges": [[m.left, m.right, m.distance, m.size] for m in self.merges],
            "linkage": self.linkage,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientTree:
        merges = tuple(Merge(int(a), int(b), float(d), int(s)) for a, b, d, s in data["merges"])
        return cls(leaves=tuple(str(x) for x in data["leaves"]), merges=merges, linkage=str(data["linkage"]))


def build_tree(D: ArrayLike, leaves: Sequence[str], linkage: str = "average") -> ClientTree:
    """Agglomerative clustering of the (N, N) distance ``D`` (scipy ``linkage``) as a ``ClientTree``."""
    d = _as_numpy(D)
    n = len(leaves)
    if d.shape != (n, n):
        raise ValueError(f"D has shape {d.shape}, expected ({n}, {n}) for {n} leaves")
    if n == 1:
        return ClientTree(tuple(leaves), (), linkage)
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    z = scipy_linkage(squareform(d, checks=False), method=linkage)
    merges = tuple(Merge(int(r[0]), int(r[1]), float(r[2]), int(r[3])) for r in z)
    return ClientTree(tuple(leaves), merges, linkage)


def silhouette(D: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette under a precomputed distance, sklearn semantics (singletons score 0).

    Vectorised: per-client sums of distances to every cluster are one (N, N) x (N, c) product.
    Requires 2 <= c <= N - 1 clusters, as sklearn does.
    """
    n = D.shape[0]
    c = int(labels.max()) + 1
    if not 2 <= c <= n - 1:
        raise ValueError(f"silhouette needs 2 <= clusters <= N - 1, got {c} clusters for N={n}")
    onehot = np.zeros((n, c))
    onehot[np.arange(n), labels] = 1.0
    sums = D @ onehot  # (N, c): sum of distances from client i to members of cluster k
    counts = onehot.sum(axis=0)
    own = sums[np.arange(n), labels]
    own_count = counts[labels]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = own / (own_count - 1)
        means = sums / counts
    means[np.arange(n), labels] = np.inf
    b = means.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (b - a) / np.maximum(a, b)
    s = np.where(own_count > 1, np.nan_to_num(s), 0.0)
    return float(s.mean())


def _phi(D: np.ndarray, labels_of: Any, c: int, tau: float) -> float:
    n = D.shape[0]
    if c == 1:
        return float(tau)
    if c >= n:
        return 0.0  # silhouette undefined for N singletons: documented convention
    return silhouette(D, labels_of(c))


@dataclass(frozen=True)
class CutResult:
    """Per-layer cuts (shallow to deep) and each layer's phi table over its window."""

    cuts: list[int]
    scores: list[dict[int, float]] = field(default_factory=list)


def choose_cuts(tree: ClientTree, layer_D: ArrayLike, K: int = 3, tau: float = 0.1) -> CutResult:
    """Per-layer cut of the global tree, docs/ALGORITHM.md step 6.

    c*_0 = 1; for each layer (shallow to deep) c*_l = argmax over c in
    [c*_{l-1}, min(N, c*_{l-1} + K)) of phi(c), ties to the smaller c; phi(1) = tau, phi(c) =
    silhouette of ``tree.partition(c)`` under that layer's distance (0.0 for c == N). When the
    window is empty (c*_{l-1} == N, i.e. N == 1) the layer keeps N. Cuts are non-decreasing by
    construction; ``scores[l]`` is layer l's phi table over its window.
    """
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    dl = _as_numpy(layer_D)
    n = tree.n
    if dl.ndim != 3 or dl.shape[1:] != (n, n):
        raise ValueError(f"layer_D must be (L, {n}, {n}), got {dl.shape}")
    prev = 1
    cuts: list[int] = []
    scores: list[dict[int, float]] = []
    for layer in range(dl.shape[0]):
        window = range(prev, min(n, prev + K))
        if prev == n or len(window) == 0:
            table = {n: _phi(dl[layer], tree.partition, n, tau)}
            best = n
        else:
            table = {c: _phi(dl[layer], tree.partition, c, tau) for c in window}
            best = max(window, key=lambda c: (table[c], -c))  # argmax, ties to the smaller c
        cuts.append(best)
        scores.append(table)
        prev = best
    return CutResult(cuts, scores)


def _best_c(D: np.ndarray, tree: ClientTree, candidates: Iterable[int], tau: float) -> int:
    cands = sorted({c for c in candidates if 1 <= c <= tree.n})
    if not cands:
        raise ValueError("no admissible number of clusters")
    table = {c: _phi(D, tree.partition, c, tau) for c in cands}
    return max(cands, key=lambda c: (table[c], -c))


def independent_cuts(
    layer_D: ArrayLike, k_range: Iterable[int] = range(1, 5), tau: float = 0.1, linkage: str = "average"
) -> list[np.ndarray]:
    """Ablation "indep": per layer, its own tree on D^(l) and its own c by silhouette (phi(1) = tau).

    Returns one label array per layer (first-appearance order); no nesting across layers.
    """
    dl = _as_numpy(layer_D)
    n = dl.shape[1]
    leaves = [str(i) for i in range(n)]
    ks = list(k_range)
    out: list[np.ndarray] = []
    for layer in range(dl.shape[0]):
        tree = build_tree(dl[layer], leaves, linkage)
        out.append(tree.partition(_best_c(dl[layer], tree, ks, tau)))
    return out


def flat_clusters(D: ArrayLike, k_range: Iterable[int] = (2, 3, 4), linkage: str = "average") -> np.ndarray:
    """FedLEASE-style flat clustering: one average-linkage clustering of D, k by best silhouette.

    k ranges over ``k_range`` restricted to 2..N-1 (ties to the smaller k). When no such k exists
    (N <= 2) every client is its own cluster.
    """
    d = _as_numpy(D)
    n = d.shape[0]
    tree = build_tree(d, [str(i) for i in range(n)], linkage)
    ks = [k for k in k_range if 2 <= k <= n - 1]
    if not ks:
        return tree.partition(n)
    return tree.partition(_best_c(d, tree, ks, tau=-np.inf))
