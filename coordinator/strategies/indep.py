"""Independent per-layer clustering (FedTreeLoRA ablation): no shared tree.

Trains: A and B. Uploads: as `flat` (warmup, then every layer). Uses: per layer, the weighted
mean of its cluster, where each layer clusters the workers on its own distance (its own
average-linkage tree, k in 1..4 by silhouette with phi(1) = tau); clusters need not nest across
layers. No external expert. A late joiner (see fedtree) is placed per layer in that layer's nearest
cluster (or a new one of its own), layers independently.
"""

from __future__ import annotations

import numpy as np

from coordinator.strategies.fedtree import FedTree
from coordinator.tree import independent_cuts


class Indep(FedTree):
    name = "indep"
    mixes_external = False
    placement = "per_layer"

    def _assign(self, workers: list[str], Dl: np.ndarray) -> list[np.ndarray]:
        self.tree = None
        return independent_cuts(Dl, range(1, 5), tau=self.cfg.tau, linkage=self.cfg.linkage)
