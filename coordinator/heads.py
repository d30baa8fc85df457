"""Classifier-head aggregation of `run.train.head_mode: cluster`: per group, per LABEL KEY.

A head push is one blob of label-keyed rows (common/schema.py, HEAD_LAYER: the label's weight row
followed by its bias entry). A strategy puts each worker in a group for the round
(`Strategy.head_group`: everyone, its cluster, or none); inside a group, every label key's row
is the weighted mean of the rows of the members that have that label (weights = example counts,
as for the adapters), so two workers share a row exactly when they share the label and the group.
Labels of different groups are never mixed.

Pushes go through the robust layer (coordinator/robust.py) with each (group, label) as its own
robust group, so `run.robust.method` (clip / median / trimmed_mean) applies per label row as it
does per adapter cluster; `mean` streams straight into the sums.

`close()` turns the round's sums into the rows workers pull next round. A (group, label) nobody
pushed to this round keeps its previous row, so do groups nobody pushed to at all. The pulled rows
of a worker are its group's rows for the labels it pushed last (the coordinator learns a worker's
label keys from its head pushes). `state()` / `meta()` / `load()` persist all of it with the
strategy's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from common.config import RobustConfig
from common.schema import HEAD_LAYER
from coordinator.robust import RobustBuffer

Tensors = dict[str, torch.Tensor]
PREFIX = "head"  # checkpoint tensor names: head/<group>/<label key>


@dataclass
class HeadSums:
    """Per group, per label key: the pulled mean row and its weight; the open round's weighted sums."""

    robust: RobustConfig = field(default_factory=RobustConfig)  # type: ignore[arg-type]
    rows: dict[str, Tensors] = field(default_factory=dict)  # group -> label -> mean row (what workers pull)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # group -> label -> weight of that mean
    labels_of: dict[str, tuple[str, ...]] = field(default_factory=dict)  # worker -> label keys of its last push
    _sums: dict[str, Tensors] = field(default_factory=dict)
    _sum_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    _buffer: RobustBuffer = field(init=False)
    _ids: dict[tuple[str, str], int] = field(default_factory=dict)  # (group, label) -> robust group id
    _keys: dict[int, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._buffer = RobustBuffer(self.robust)

    # -- a round -------------------------------------------------------------------------------
    def add(self, worker_id: str, group: str, rows: Tensors, weight: float) -> None:
        """Fold one worker's validated label rows into `group`'s sums with `weight`."""
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        if not group or "/" in group:
            raise ValueError(f"head group name {group!r} must be non-empty and free of '/'")
        self.labels_of[worker_id] = tuple(sorted(rows))
        for label, row in rows.items():
            gid = self._ids.setdefault((group, label), len(self._ids))
            self._keys[gid] = (group, label)
            self._buffer.add(self._sink, HEAD_LAYER, gid, {label: row}, weight)

    def _sink(self, layer: int, gid: int, tensors: Tensors, weight: float) -> None:
        group, label = self._keys[gid]
        row = tensors[label].detach().to(torch.float32)
        sums = self._sums.setdefault(group, {})
        if label in sums:
            sums[label] = sums[label] + row * weight
        else:
            sums[label] = row * weight
        ws = self._sum_weights.setdefault(group, {})
        ws[label] = ws.get(label, 0.0) + weight

    def close(self) -> None:
        """The round's sums become the pulled rows; (group, label)s without pushes keep theirs."""
        self._buffer.flush(self._sink)
        for group, sums in self._sums.items():
            rows = dict(self.rows.get(group, {}))
            weights = dict(self.weights.get(group, {}))
            for label, total in sums.items():
                weight = self._sum_weights[group][label]
                rows[label] = (total / weight).contiguous()
                weights[label] = weight
            self.rows[group] = rows
            self.weights[group] = weights
        self._sums, self._sum_weights = {}, {}
        self._ids.clear()
        self._keys.clear()

    @property
    def pending(self) -> bool:
        """Has the open round received head rows (or buffered any)?"""
        return bool(self._sums) or bool(self._ids)

    # -- pulls ---------------------------------------------------------------------------------
    def rows_for(self, group: str, labels: tuple[str, ...] | None) -> Tensors:
        """`group`'s rows of `labels` that it has (every row of the group when `labels` is None)."""
        rows = self.rows.get(group, {})
        if labels is None:
            return dict(rows)
        return {label: rows[label] for label in labels if label in rows}

    # -- persistence ---------------------------------------------------------------------------
    def state(self) -> Tensors:
        return {f"{PREFIX}/{group}/{label}": row for group, rows in self.rows.items() for label, row in rows.items()}

    def meta(self) -> dict[str, Any]:
        return {"weights": self.weights, "labels_of": {w: list(labels) for w, labels in self.labels_of.items()}}

    def load(self, tensors: Tensors, meta: dict[str, Any] | None) -> None:
        """Restore from `state()` (other keys of a strategy checkpoint are ignored) and `meta()`."""
        meta = meta or {}
        weights = meta.get("weights") or {}
        self.rows, self.weights = {}, {}
        for key, tensor in tensors.items():
            kind, _, rest = key.partition("/")
            if kind != PREFIX:
                continue
            group, label = rest.split("/", 1)
            self.rows.setdefault(group, {})[label] = tensor.to(torch.float32)
            self.weights.setdefault(group, {})[label] = float(weights.get(group, {}).get(label, 1.0))
        self.labels_of = {w: tuple(labels) for w, labels in (meta.get("labels_of") or {}).items()}


def is_head_key(key: str) -> bool:
    """Is a strategy-checkpoint tensor name one of HeadSums.state()'s?"""
    return key.startswith(PREFIX + "/")
