"""Running weighted sums of adapter tensors, kept per layer as uploads arrive."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Tensors = dict[str, torch.Tensor]


@dataclass
class WeightedSum:
    """sum_k w_k * T_k and sum_k w_k for every tensor name of every layer.

    Sums accumulate in float32 whatever the wire dtype, so bf16/fp16 uploads do not lose
    precision in the aggregate; `mean` casts back to the dtype the tensors arrived in.
    """

    sums: dict[int, Tensors] = field(default_factory=dict)
    weights: dict[int, float] = field(default_factory=dict)
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)

    def add(self, layer: int, tensors: Tensors, weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight}")
        acc = self.sums.setdefault(layer, {})
        for name, tensor in tensors.items():
            self.dtypes.setdefault(name, tensor.dtype)
            if name in acc:  # one fused pass, no temporary (for float32 arrivals)
                acc[name].add_(tensor.detach().to(torch.float32), alpha=weight)
            else:
                acc[name] = tensor.detach().to(torch.float32) * weight
        self.weights[layer] = self.weights.get(layer, 0.0) + weight

    def layers(self) -> list[int]:
        return sorted(self.sums)

    def mean(self, layer: int) -> Tensors:
        weight = self.weights[layer]
        return {name: (s / weight).to(self.dtypes[name]) for name, s in self.sums[layer].items()}

    def means(self) -> dict[int, Tensors]:
        return {layer: self.mean(layer) for layer in self.layers()}

    def take_means(self) -> dict[int, Tensors]:
        """`means()`, computed in the sums' own memory, which they then are: the sums are gone
        (empty afterwards). No second adapter-sized allocation at the close of a round (a
        float32 mean is the sum tensor itself; another dtype costs the cast only)."""
        out: dict[int, Tensors] = {}
        for layer in self.layers():
            weight = self.weights[layer]
            out[layer] = {name: s.div_(weight).to(self.dtypes[name]) for name, s in self.sums[layer].items()}
        self.sums, self.weights = {}, {}
        return out
