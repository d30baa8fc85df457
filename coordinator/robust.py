"""Robust aggregation inside a group (a cluster, or everyone for FedIT-like strategies).

The default, ``mean``, streams: every push is folded into running sums the moment it is valid,
so coordinator memory grows with groups, not with workers. The robust methods need all of a
group's updates for a layer at once, so they buffer each push (memory grows with workers for
the round) and reduce at the end of the round:

- ``clip``: centred norm clipping. The centre is the coordinate-wise median of the group's
  updates; each update's distance from it is clipped to ``clip_norm`` (None: the median of
  those distances), then the weighted mean of centre + clipped deltas is taken. One update
  scaled x100 moves the result by at most ``clip_norm / n``.
- ``median``: coordinate-wise median (unweighted; the mean of the two middle values when even).
- ``trimmed_mean``: per coordinate, drop the ``trim_fraction`` largest and smallest values
  (at least one each side once the group has 3 members), average the rest (unweighted).

A group of one or two members cannot out-vote anyone: median and trimmed mean of two equal the
mean. The group's weight stays the sum of its members' weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from common.config import RobustConfig

Tensors = dict[str, torch.Tensor]
# (layer, group, reduced tensors, total weight) -> where a strategy keeps it
Sink = Callable[[int, int, Tensors, float], None]


def coordinate_median(stack: torch.Tensor) -> torch.Tensor:
    """Median along dim 0; with an even count, the mean of the two middle values."""
    ordered = stack.sort(dim=0).values
    n = stack.shape[0]
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def trimmed_mean(stack: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean along dim 0 after dropping ``k = max(1, floor(fraction * n))`` values at each end
    (k = 0 below 3 members; never more than leaves one value)."""
    n = stack.shape[0]
    k = 0 if n < 3 or fraction <= 0 else max(1, math.floor(fraction * n))
    k = min(k, (n - 1) // 2)
    ordered = stack.sort(dim=0).values
    return ordered[k : n - k].mean(dim=0)


def centered_clip(updates: list[Tensors], weights: list[float], clip_norm: float | None) -> Tensors:
    """Weighted mean of the updates after clipping each one's distance from the coordinate-wise
    median to ``clip_norm`` (None: the median distance). Norms span all tensors of an update."""
    names = list(updates[0])
    centre = {name: coordinate_median(torch.stack([u[name] for u in updates])) for name in names}
    deltas = [{name: u[name] - centre[name] for name in names} for u in updates]
    norms = torch.tensor([math.sqrt(sum(float(d[n].square().sum()) for n in names)) for d in deltas])
    bound = float(norms.median()) if clip_norm is None else clip_norm
    scales = [1.0 if norm <= bound or norm == 0 else bound / float(norm) for norm in norms]
    total = sum(weights)
    return {
        name: centre[name] + sum(w * s * d[name] for w, s, d in zip(weights, scales, deltas, strict=True)) / total
        for name in names
    }


def reduce_group(updates: list[Tensors], weights: list[float], cfg: RobustConfig) -> Tensors:
    """One group's aggregate of one layer under ``cfg.method`` (float32 in, float32 out)."""
    if cfg.method == "clip":
        return centered_clip(updates, weights, cfg.clip_norm)
    if cfg.method == "median":
        return {name: coordinate_median(torch.stack([u[name] for u in updates])) for name in updates[0]}
    if cfg.method == "trimmed_mean":
        return {name: trimmed_mean(torch.stack([u[name] for u in updates]), cfg.trim_fraction) for name in updates[0]}
    w = torch.tensor(weights, dtype=torch.float32)
    return {name: torch.tensordot(w, torch.stack([u[name] for u in updates]), dims=1) / w.sum() for name in updates[0]}


@dataclass
class RobustBuffer:
    """Where a strategy folds pushes: straight into its sums (``mean``), or buffered per
    (layer, group) and reduced robustly by ``flush`` at the end of the round."""

    cfg: RobustConfig
    _held: dict[tuple[int, int], list[tuple[Tensors, float]]] = field(default_factory=dict)
    _dtypes: dict[str, torch.dtype] = field(default_factory=dict)

    @property
    def buffers(self) -> bool:
        return self.cfg.method != "mean"

    def add(self, sink: Sink, layer: int, group: int, tensors: Tensors, weight: float) -> None:
        if not self.buffers:
            sink(layer, group, tensors, weight)
            return
        for name, t in tensors.items():
            self._dtypes.setdefault(name, t.dtype)
        kept = {name: t.detach().to(torch.float32) for name, t in tensors.items()}
        self._held.setdefault((layer, group), []).append((kept, float(weight)))

    def flush(self, sink: Sink) -> None:
        """Reduce every buffered (layer, group) into ``sink``, casting back to the arrival dtype."""
        for (layer, group), held in sorted(self._held.items()):
            updates = [u for u, _ in held]
            weights = [w for _, w in held]
            reduced = reduce_group(updates, weights, self.cfg)
            sink(layer, group, {n: t.to(self._dtypes[n]) for n, t in reduced.items()}, sum(weights))
        self._held.clear()

    def reduce(self, updates: list[Tensors], weights: list[float]) -> Tensors:
        """One group's aggregate at once, for groups a strategy only forms when it hands them out
        (FedALT's rest of world: everyone but the worker pulling): ``cfg.method`` in float32,
        cast back to the first update's dtypes."""
        dtypes = {name: t.dtype for name, t in updates[0].items()}
        kept = [{name: t.detach().to(torch.float32) for name, t in u.items()} for u in updates]
        return {n: t.to(dtypes[n]) for n, t in reduce_group(kept, weights, self.cfg).items()}
