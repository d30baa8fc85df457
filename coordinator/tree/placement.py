"""Placing a late joiner in an existing client tree without moving anyone (docs/ALGORITHM.md,
"Late joiners"; beyond the paper, which builds the tree once over the clients present then).

Per layer, the joiner goes to the cluster of that layer's cut whose members are nearest on
average under the layer distance (average linkage: the mean distance to the members, as the tree
was built). With nesting (FedTreeLoRA) the candidates are the clusters inside the one it joined
in the layer above, so its deeper-layer cluster lies inside its shallower-layer one, as the cuts'
clusters do. A joiner farther from its nearest cluster than `factor` x the cut's merge distance
(the smallest average-linkage distance between two clusters of the layer's cut: for a cut of an
average-linkage tree, the distance of the next merge above the cut) gets a new branch of its own
instead; under nesting it keeps it in every deeper layer. A layer with one cluster has no merge
above its cut: everyone, the joiner included, shares its trunk.

Everything here is pure numpy on distances; the strategy computes them one layer at a time
(coordinator/strategies/fedtree.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LayerPlace", "Placement", "cut_merge_distance", "place_layer"]


@dataclass(frozen=True)
class LayerPlace:
    """Where a late joiner went in one layer."""

    cluster: int  # the cluster it joined, or (new_branch) the id of its own new cluster
    nearest: int  # the nearest eligible existing cluster (= cluster unless new_branch; -1: none existed)
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
    """(cluster ids, mean of `values` over each cluster's members), ids sorted."""
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


def place_layer(
    d: np.ndarray, D: np.ndarray, labels: np.ndarray, eligible: np.ndarray | None, factor: float | None
) -> LayerPlace:
    """One layer's place of a joiner at distances `d` (N,) from the N members, whose pairwise
    distances are `D` (N, N) and clusters `labels` (N,), under the layer distance.

    `eligible` (bool, N) restricts the candidates to the clusters of those members (nesting;
    None: every cluster); with no eligible member the joiner branches off (its branch began
    above). `factor` scales the threshold; None: never a new branch. The returned `cluster` is
    the nearest cluster, also where `new_branch` is set (the strategy gives the branch its id).
    Ties go to the smaller cluster id.
    """
    labels = np.asarray(labels)
    merge = cut_merge_distance(D, labels)
    threshold = math.inf if merge is None or factor is None else factor * merge
    mask = np.ones(len(labels), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    forced = not mask.any()
    if forced:  # its branch began in a shallower layer: report the nearest cluster of all
        mask = np.ones(len(labels), dtype=bool)
    if not mask.any():
        return LayerPlace(-1, -1, math.inf, threshold, True)
    ids, means = _cluster_means(d[mask].reshape(1, -1), labels[mask])
    best = int(np.argmin(means[0]))  # argmin: the first, i.e. the smallest id, on ties
    nearest, distance = int(ids[best]), float(means[0, best])
    return LayerPlace(nearest, nearest, distance, threshold, forced or distance > threshold)
