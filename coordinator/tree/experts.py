"""Cluster and external experts from running sums (docs/ALGORITHM.md, Procedure step 7).

For each layer the coordinator keeps, per cluster id, the weighted sum of every uploaded tensor
and the summed weight, plus the layer's total over all clusters. The cluster expert is the
cluster's weighted mean; the external expert of a cluster is the mean over everyone else,
``(Total - Sum_S) / (w_total - w_S)`` -- O(1) per (layer, cluster), O(clusters) per layer,
never O(N^2). Sums accumulate in float32; results are cast back to the dtype the tensors came in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Tensors = dict[str, torch.Tensor]

__all__ = ["ClusterSums", "Tensors"]


@dataclass
class ClusterSums:
    """Running float32 sums ``sum_k w_k T_k`` per (layer, cluster) and per layer in total."""

    sums: dict[int, dict[int, Tensors]] = field(default_factory=dict)
    weights: dict[int, dict[int, float]] = field(default_factory=dict)
    totals: dict[int, Tensors] = field(default_factory=dict)
    total_weights: dict[int, float] = field(default_factory=dict)
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    # means handed out since the last add(): every worker of a cluster gets the same tensors, so
    # N workers pulling cost O(clusters) memory, not O(N) fresh copies
    _memo: dict[tuple[str, int, int], Tensors | None] = field(default_factory=dict, repr=False)

    def _memoised(self, key: tuple[str, int, int], compute: Callable[[], Tensors | None]) -> Tensors | None:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def add(self, layer: int, cluster: int, tensors: Tensors, weight: float) -> None:
        """Add one client's tensors for ``layer`` to ``cluster`` with ``weight`` (e.g. its example count)."""
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        csum = self.sums.setdefault(layer, {}).setdefault(cluster, {})
        total = self.totals.setdefault(layer, {})
        for name, tensor in tensors.items():
            self.dtypes.setdefault(name, tensor.dtype)
            scaled = tensor.detach().to(torch.float32) * float(weight)
            for acc in (csum, total):
                if name in acc:
                    if acc[name].shape != scaled.shape:
                        raise ValueError(f"{name} at layer {layer}: shape {tuple(scaled.shape)} != {tuple(acc[name].shape)}")
                    acc[name].add_(scaled)
                else:
                    acc[name] = scaled.clone()
        self._memo.clear()
        lw = self.weights.setdefault(layer, {})
        lw[cluster] = lw.get(cluster, 0.0) + float(weight)
        self.total_weights[layer] = self.total_weights.get(layer, 0.0) + float(weight)

    def clusters(self, layer: int) -> list[int]:
        """Cluster ids that received uploads at ``layer``, sorted."""
        return sorted(self.weights.get(layer, {}))

    def _cast(self, tensors: Tensors) -> Tensors:
        return {name: t.to(self.dtypes.get(name, t.dtype)) for name, t in tensors.items()}

    def total_mean(self, layer: int) -> Tensors:
        """Weighted mean over every client of ``layer``, whatever its cluster."""
        total = self.total_weights[layer]
        mean = self._memoised(("total", layer, -1), lambda: self._cast({n: t / total for n, t in self.totals[layer].items()}))
        assert mean is not None
        return mean

    def cluster_mean(self, layer: int, cluster: int) -> Tensors:
        """Weighted mean over the members of ``cluster`` at ``layer`` (the cluster expert)."""
        try:
            csum = self.sums[layer][cluster]
            w = self.weights[layer][cluster]
        except KeyError as exc:
            raise KeyError(f"no uploads for layer {layer} cluster {cluster}") from exc
        mean = self._memoised(("cluster", layer, cluster), lambda: self._cast({n: t / w for n, t in csum.items()}))
        assert mean is not None
        return mean

    def external_mean(self, layer: int, cluster: int) -> Tensors | None:
        """Weighted mean over every client NOT in ``cluster`` at ``layer`` (the external expert).

        None when the layer has a single cluster or the rest of the layer has zero weight.
        """
        if layer not in self.weights or cluster not in self.weights[layer]:
            raise KeyError(f"no uploads for layer {layer} cluster {cluster}")
        if len(self.weights[layer]) <= 1:
            return None
        rest = self.total_weights[layer] - self.weights[layer][cluster]
        if rest <= 0:
            return None
        csum = self.sums[layer][cluster]

        def compute() -> Tensors:
            return self._cast({n: (t - csum[n]) / rest if n in csum else t / rest for n, t in self.totals[layer].items()})

        return self._memoised(("external", layer, cluster), compute)
