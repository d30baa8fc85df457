"""Placing a late joiner in an existing client tree without moving anyone (docs/ALGORITHM.md,
"Late joiners"; beyond the paper, which builds the tree once over the clients present then).

Distances are average linkage, as the tree was built: a joiner's distance to a cluster of a layer's
cut is its mean distance to the cluster's members under that layer's distance.

Nested (FedTreeLoRA, `place_nested`): the cuts' clusters nest (a deeper layer's cluster lies inside
a shallower layer's), so a joiner's clusters over the layers form a path down the tree, fixed by
its deepest-layer cluster. It takes the path whose clusters are nearest summed over the layers
(each layer's cluster under that layer's distance; where every layer has the same cut this is
average linkage under the tree's own global distance, the mean of the layer distances) rather
than the nearest cluster layer by layer from the top: a shallow layer, where clients differ
least, does not then decide alone on the deeper ones. Walking down that path, it joins each
layer's cluster unless its distance to it exceeds `factor` x that cluster's merge distance at the
cut (its average-linkage distance to the nearest other cluster of the layer's cut: the distance
at which average linkage would merge it next, so a joiner farther than that would have stayed
apart at this cut had it been there at the build); from that layer down it has a new branch of
its own. A layer with one cluster has no merge above its cut: everyone, the joiner included,
shares its trunk.

Independent (indep, `place_layer` per layer) and global (flat: one placement on the mean over
layers, the same cluster in every layer) use the same rule on one layer at a time.

Everything here is pure numpy on distances; the strategy computes them one layer at a time
(coordinator/strategies/fedtree.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["LayerPlace", "Placement", "merge_distances", "place_layer", "place_nested", "thresholds"]


@dataclass(frozen=True)
class LayerPlace:
    """Where a late joiner went in one layer."""

    cluster: int  # the cluster it joined, or (new_branch) the id of its own new cluster
    nearest: int  # the existing cluster it was measured against (= cluster unless new_branch; -1: none)
    distance: float  # its mean distance to the members of `nearest` under the layer distance
    threshold: float  # factor x the merge distance of `nearest` at the cut (inf: no new branch possible here)
    new_branch: bool

    def to_list(self) -> list[Any]:
        return [self.cluster, self.nearest, self.distance, self.threshold, self.new_branch]

    @classmethod
    def from_list(cls, row: list[Any]) -> LayerPlace:
        return cls(int(row[0]), int(row[1]), float(row[2]), float(row[3]), bool(row[4]))


@dataclass(frozen=True)
class Placement:
    """A placed late joiner: the round whose upload placed it and its place per layer (shallow to deep)."""

    round: int
    layers: tuple[LayerPlace, ...]

    @property
    def distance(self) -> float:
        """Its distance to the cluster it joined in the deepest layer (to its nearest one where it branched off)."""
        return self.layers[-1].distance if self.layers else math.inf

    @property
    def branch_from(self) -> int | None:
        """Index of the shallowest layer where it has its own branch; None: it joined clusters everywhere."""
        return next((i for i, p in enumerate(self.layers) if p.new_branch), None)

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "layers": [p.to_list() for p in self.layers]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Placement:
        return cls(int(data["round"]), tuple(LayerPlace.from_list(row) for row in data["layers"]))


def _cluster_means(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster ids, mean of `values` (N,) over each cluster's members), ids sorted."""
    ids, inverse = np.unique(labels, return_inverse=True)
    onehot = np.zeros((len(labels), len(ids)))
    onehot[np.arange(len(labels)), inverse.reshape(-1)] = 1.0
    return ids, (values @ onehot) / onehot.sum(axis=0)


def merge_distances(D: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Per cluster of the partition `labels` under the (N, N) distance `D`: its average-linkage
    distance (the mean over member pairs) to the nearest other cluster, the distance at which
    average linkage would merge it next; inf with fewer than two clusters."""
    ids, inverse = np.unique(labels, return_inverse=True)
    if len(ids) < 2:
        return {int(c): math.inf for c in ids}
    onehot = np.zeros((len(labels), len(ids)))
    onehot[np.arange(len(labels)), inverse.reshape(-1)] = 1.0
    counts = onehot.sum(axis=0)
    means = (onehot.T @ D @ onehot) / np.outer(counts, counts)
    np.fill_diagonal(means, np.inf)
    return {int(c): float(m) for c, m in zip(ids, means.min(axis=1), strict=True)}


def thresholds(D: np.ndarray, labels: np.ndarray, factor: float | None) -> dict[int, float]:
    """Per cluster of a layer's cut, the new-branch threshold: `factor` x its merge distance; inf
    where it has none (one cluster) or `factor` is None (never a new branch)."""
    return {c: math.inf if factor is None else factor * m for c, m in merge_distances(D, labels).items()}


def place_layer(d: np.ndarray, labels: np.ndarray, limits: dict[int, float]) -> LayerPlace:
    """One layer on its own: the nearest cluster (ties to the smaller id) of the members at
    distances `d` (N,) with clusters `labels` (N,); a new branch when it is farther than that
    cluster's threshold in `limits`. The returned `cluster` is the nearest one also where
    `new_branch` is set (the strategy gives the branch its id)."""
    if len(labels) == 0:
        return LayerPlace(-1, -1, math.inf, math.inf, True)
    ids, means = _cluster_means(np.asarray(d, dtype=float), np.asarray(labels))
    best = int(np.argmin(means))  # the first, i.e. the smallest id, on ties
    nearest, distance = int(ids[best]), float(means[best])
    return LayerPlace(nearest, nearest, distance, limits[nearest], distance > limits[nearest])


def place_nested(d: list[np.ndarray], labels: list[np.ndarray], limits: list[dict[int, float]]) -> list[LayerPlace]:
    """Per layer (shallow to deep) of nested cuts: the joiner's distances `d[l]` (N,) to the
    members, their clusters `labels[l]` (N,) and the clusters' thresholds `limits[l]`. The path of
    clusters with the smallest summed distance, then a new branch from the first layer where its
    cluster is farther than that cluster's threshold (every deeper layer too)."""
    if not labels or len(labels[0]) == 0:
        return [LayerPlace(-1, -1, math.inf, math.inf, True) for _ in limits]
    means = [
        dict(zip(*(x.tolist() for x in _cluster_means(np.asarray(dl, dtype=float), np.asarray(ll))), strict=True))
        for dl, ll in zip(d, labels, strict=True)
    ]
    deepest = labels[-1]
    paths: dict[int, list[int]] = {}
    for k in sorted(set(deepest.tolist())):
        first = int(np.flatnonzero(deepest == k)[0])  # nested: every member of k has the same ancestors
        paths[k] = [int(ll[first]) for ll in labels]
    best = min(paths, key=lambda k: (sum(means[layer][c] for layer, c in enumerate(paths[k])), k))
    out: list[LayerPlace] = []
    branched = False
    for layer, cluster in enumerate(paths[best]):
        distance, limit = float(means[layer][cluster]), limits[layer][cluster]
        branched = branched or distance > limit
        out.append(LayerPlace(cluster, cluster, distance, limit, branched))
    return out


PlacementMode = Literal["nested", "per_layer", "global"]


def choose_places(
    d: list[np.ndarray], D: list[np.ndarray], labels: list[np.ndarray], factor: float | None, mode: PlacementMode
) -> list[LayerPlace]:
    """A joiner's place per layer (shallow to deep), from its distances `d[l]` (N,) to the members,
    theirs `D[l]` (N, N) and their clusters `labels[l]` (N,): `nested` (the tree's nested cuts,
    place_nested), `per_layer` (each layer on its own: indep) or `global` (flat: one clustering,
    placed once on the mean over layers, the same place in every layer)."""
    if mode == "global":
        one = place_layer(np.mean(d, axis=0), labels[0], thresholds(np.mean(D, axis=0), labels[0], factor))
        return [one] * len(d)
    limits = [thresholds(D_l, labels_l, factor) for D_l, labels_l in zip(D, labels, strict=True)]
    if mode == "per_layer":
        return [place_layer(d_l, labels_l, limit) for d_l, labels_l, limit in zip(d, labels, limits, strict=True)]
    return place_nested(d, labels, limits)
