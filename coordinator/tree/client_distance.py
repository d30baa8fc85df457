"""One layer's client distances as FedTreeLoRA uses them (docs/ALGORITHM.md step 4): the LoRA factor
`fedtree.distance_on` names (B, the paper's, or A), compared under `fedtree.metric` (span: the
subspaces the factors write into or read from, coordinator/tree/spans.py; euclidean or cosine:
the matrices, coordinator/tree/distances.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from common.schema import is_lora_a, is_lora_b
from coordinator.tree.distances import layer_distances, stack_b
from coordinator.tree.spans import span_layer_distances


def factor_filter(distance_on: Literal["A", "B"]) -> Callable[[str], bool]:
    """Which tensors of an upload the distance compares: the A factors or the B factors."""
    return is_lora_a if distance_on == "A" else is_lora_b


def client_layer_distances(
    layer_of: Sequence[dict[str, torch.Tensor]], metric: Literal["euclidean", "cosine", "span"], distance_on: Literal["A", "B"]
) -> np.ndarray:
    """(N, N) distances between N clients' uploads of one layer (`layer_of[i]`: name -> tensor)."""
    factor = factor_filter(distance_on)
    if metric == "span":
        return span_layer_distances(list(layer_of), factor, rows=distance_on == "A")
    return layer_distances(stack_b([{0: t} for t in layer_of], names_filter=factor), metric=metric).numpy()[0]
