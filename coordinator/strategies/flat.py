"""Flat clustering (FedLEASE-style): one clustering of workers, the same in every layer.

Trains: A and B. Uploads: nothing during `run.fedtree.warmup_rounds` except at its last round
(all A and B, for clustering); afterwards A and B of every layer. Uses: the weighted mean A and
B of its cluster, in every layer; the clusters are one average-linkage clustering of the global
B distance with k chosen by silhouette in 2..4. No external expert. A late joiner (see fedtree) is
placed once, on the global distance, in the nearest flat cluster (or a new one of its own), the
same in every layer.
"""

from __future__ import annotations

import numpy as np

from coordinator.strategies.fedtree import FedTree
from coordinator.tree import build_tree, flat_clusters


class Flat(FedTree):
    name = "flat"
    mixes_external = False
    placement = "global"

    def _assign(self, workers: list[str], Dl: np.ndarray) -> list[np.ndarray]:
        D = Dl.mean(axis=0)
        self.tree = build_tree(D, workers, self.cfg.linkage)
        labels = flat_clusters(D, (2, 3, 4), self.cfg.linkage)
        return [labels] * len(Dl)
