"""FedTreeLoRA core math: B distances, the global client tree, per-layer cuts and expert sums."""

from coordinator.tree.clustering import (
    ClientTree,
    CutResult,
    Merge,
    build_tree,
    choose_cuts,
    flat_clusters,
    independent_cuts,
    silhouette,
)
from coordinator.tree.distances import Metric, global_distance, layer_distances, stack_b
from coordinator.tree.experts import ClusterSums

__all__ = [
    "ClientTree",
    "ClusterSums",
    "CutResult",
    "Merge",
    "Metric",
    "build_tree",
    "choose_cuts",
    "flat_clusters",
    "global_distance",
    "independent_cuts",
    "layer_distances",
    "silhouette",
    "stack_b",
]
