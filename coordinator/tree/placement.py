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
layer's cluster unless its distance to it exceeds the layer's threshold, `factor` x the cut's
merge distance (the smallest average-linkage distance between two clusters of the layer's cut;
for a cut of an average-linkage tree, the distance of the next merge above the cut): from that
layer down it has a new branch of its own. A layer with one cluster has no merge above its cut:
everyone, the joiner included, shares its trunk.

Independent (indep, `place_layer` per layer) and global (flat: one placement on the mean over
layers, the same cluster in every layer) use the same rule on one layer at a time.

Everything here is pure numpy on distances; the strategy computes them one layer at a time
(coordinator/strategies/fedtree.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LayerPlace", "Placement", "cut_merge_distance", "place_layer", "place_nested", "threshold"]


@dataclass(frozen=True)
class LayerPlace:
    """Where a late joiner went in one layer."""

    cluster: int  # the cluster it joined, or (new_branch) the id of its own new cluster
    nearest: int  # the existing cluster it was measured against (= cluster unless new_branch; -1: none)
    distance: float  # its mean distance to the members of `nearest` under the layer distance
    threshold: float  # factor x the cut's merge distance (inf: no new branch possible in this layer)
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


def cut_merge_distance(D: np.ndarray, labels: np.ndarray) -> float | None:
    """The smallest average-linkage distance between two clusters of the partition `labels` under
    the (N, N) distance `D` (the mean over member pairs); None with fewer than two clusters."""
    ids, inverse = np.unique(labels, return_inverse=True)
    if len(ids) < 2:
        return None
    onehot = np.zeros((len(labels), len(ids)))
    onehot[np.arange(len(labels)), inverse.reshape(-1)] = 1.0
    counts = onehot.sum(axis=0)
    means = (onehot.T @ D @ onehot) / np.outer(counts, counts)
    np.fill_diagonal(means, np.inf)
    return float(means.min())


def threshold(D: np.ndarray, labels: np.ndarray, factor: float | None) -> float:
    """A layer's new-branch threshold: `factor` x the cut's merge distance; inf where there is none
    (one cluster) or `factor` is None (never a new branch)."""
    merge = cut_merge_distance(D, labels)
    return math.inf if merge is None or factor is None else factor * merge


def place_layer(d: np.ndarray, labels: np.ndarray, limit: float) -> LayerPlace:
    """One layer on its own: the nearest cluster (ties to the smaller id) of the members at
    distances `d` (N,) with clusters `labels` (N,); a new branch when it is farther than `limit`.
    The returned `cluster` is the nearest one also where `new_branch` is set (the strategy gives the
    branch its id)."""
    if len(labels) == 0:
        return LayerPlace(-1, -1, math.inf, limit, True)
    ids, means = _cluster_means(np.asarray(d, dtype=float), np.asarray(labels))
    best = int(np.argmin(means))  # the first, i.e. the smallest id, on ties
    nearest, distance = int(ids[best]), float(means[best])
    return LayerPlace(nearest, nearest, distance, limit, distance > limit)


def place_nested(d: list[np.ndarray], labels: list[np.ndarray], limits: list[float]) -> list[LayerPlace]:
    """Per layer (shallow to deep) of nested cuts: the joiner's distances `d[l]` (N,) to the
    members, their clusters `labels[l]` (N,) and the layer's threshold `limits[l]`. The path of
    clusters with the smallest summed distance, then a new branch from the first layer where its
    cluster is farther than the threshold (every deeper layer too)."""
    if not labels or len(labels[0]) == 0:
        return [LayerPlace(-1, -1, math.inf, limit, True) for limit in limits]
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
        distance = float(means[layer][cluster])
        branched = branched or distance > limits[layer]
        out.append(LayerPlace(cluster, cluster, distance, limits[layer], branched))
    return out
