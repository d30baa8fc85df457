"""Heterogeneous-federation partitioner.

Clients are split into contiguous, (near-)equal groups, one group per task.  Within
a task every client draws its label proportions from ``Dirichlet(alpha)`` (or uses
uniform proportions when ``alpha is None``) and receives ``train_size`` training and
``val_size`` validation examples sampled without replacement, so no example is
shared by two clients or by a client's train and val splits.  The validation split
follows the same label distribution as the client's training split.  All randomness
comes from a single ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.data.corpora import load_corpus
from worker.data.files import write_jsonl
from worker.data.types import Example

logger = logging.getLogger(__name__)

__all__ = [
    "ClientPartition",
    "client_task",
    "partition_federation",
    "read_partition_meta",
    "write_partitions",
]

META_FILE = "meta.json"


@dataclass
class ClientPartition:
    """One client's private data: its task, the task's full label list and its splits."""

    client_id: str
    task: str
    labels: list[str]
    train: list[Example]
    val: list[Example]

    def label_counts(self, split: str = "train") -> dict[str, int]:
        """Per-label example counts of ``split`` ("train" or "val"), over all task labels."""
        counts = Counter(ex.label for ex in getattr(self, split))
        return {label: counts.get(label, 0) for label in self.labels}


def client_task(index: int, tasks: Sequence[str], num_clients: int) -> str:
    """Task of client ``index``: contiguous equal groups, ``tasks[i * len(tasks) // n]``."""
    return tasks[index * len(tasks) // num_clients]


def _largest_remainder(n: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split ``n`` units proportionally to ``weights`` (ties broken randomly)."""
    share = weights / weights.sum() * n
    counts: np.ndarray = np.floor(share).astype(np.int64)
    left = n - int(counts.sum())
    if left > 0:
        order = np.lexsort((rng.random(len(share)), -(share - counts)))
        counts[order[:left]] += 1
    return counts


def _allocate(n: int, props: np.ndarray, room: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-label counts summing exactly to ``n``, following ``props`` but never above ``room``.

    Units that do not fit a label are redistributed to labels that still have
    examples, proportionally to ``props`` (or to the remaining room when those
    labels all have zero probability).
    """
    if int(room.sum()) < n:
        raise ValueError(f"cannot draw {n} examples: only {int(room.sum())} left")
    counts = np.zeros(len(props), dtype=np.int64)
    deficit = n
    while deficit > 0:
        open_ = room - counts > 0
        weights = np.where(open_, props, 0.0)
        if weights.sum() <= 0:
            weights = np.where(open_, room - counts, 0).astype(np.float64)
        extra = _largest_remainder(deficit, weights, rng)
        counts += np.minimum(extra, room - counts)
        deficit = n - int(counts.sum())
    return counts


def _take(pools: list[list[Example]], counts: np.ndarray, rng: np.random.Generator) -> list[Example]:
    """Pop ``counts[j]`` examples from each (pre-shuffled) label pool and shuffle them."""
    picked: list[Example] = []
    for pool, count in zip(pools, counts.tolist()):
        picked.extend(pool[len(pool) - count :])
        del pool[len(pool) - count :]
    return [picked[i] for i in rng.permutation(len(picked))]


def partition_federation(
    tasks: Sequence[str],
    num_clients: int,
    train_size: int,
    val_size: int,
    alpha: float | None = 0.5,
    seed: int = 0,
    loader: Callable[[str], list[Example]] = load_corpus,
) -> list[ClientPartition]:
    """Split task corpora into disjoint, label-skewed per-client train/val sets.

    Client ``i`` (id ``client-i``) gets task ``tasks[i * len(tasks) // num_clients]``.
    Raises ``ValueError`` for invalid arguments or a task corpus too small to give
    every one of its clients ``train_size + val_size`` distinct examples.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("at least one task is required")
    if num_clients < len(tasks):
        raise ValueError(f"num_clients ({num_clients}) must be >= number of tasks ({len(tasks)})")
    if train_size < 1 or val_size < 0:
        raise ValueError(f"need train_size >= 1 and val_size >= 0, got {train_size} and {val_size}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"alpha must be > 0 or None (IID), got {alpha}")

    rng = np.random.default_rng(seed)
    assignment = [client_task(i, tasks, num_clients) for i in range(num_clients)]
    demand = Counter(assignment)
    labels: dict[str, list[str]] = {}
    pools: dict[str, list[list[Example]]] = {}
    for task in dict.fromkeys(assignment):
        corpus = loader(task)
        need = demand[task] * (train_size + val_size)
        if len(corpus) < need:
            raise ValueError(
                f"task {task!r} has {len(corpus)} examples but its {demand[task]} client(s) need "
                f"{need} ({train_size} train + {val_size} val each)"
            )
        labels[task] = sorted({ex.label for ex in corpus})
        by_label: dict[str, list[Example]] = {label: [] for label in labels[task]}
        for ex in corpus:
            by_label[ex.label].append(ex)
        pools[task] = [[group[i] for i in rng.permutation(len(group))] for group in by_label.values()]
        logger.info("task %s: %d examples, %d labels, %d client(s)", task, len(corpus), len(labels[task]), demand[task])

    partitions: list[ClientPartition] = []
    for index, task in enumerate(assignment):
        task_pools = pools[task]
        n_labels = len(task_pools)
        if alpha is None:
            props = np.full(n_labels, 1.0 / n_labels)
        else:
            props = np.nan_to_num(rng.dirichlet(np.full(n_labels, float(alpha))))
        room = np.array([len(pool) for pool in task_pools], dtype=np.int64)
        train_counts = _allocate(train_size, props, room, rng)
        val_counts = _allocate(val_size, props, room - train_counts, rng)
        train = _take(task_pools, train_counts, rng)
        val = _take(task_pools, val_counts, rng)
        partitions.append(
            ClientPartition(client_id=f"client-{index}", task=task, labels=list(labels[task]), train=train, val=val)
        )
        logger.debug("client-%d (%s): train %s", index, task, dict(zip(labels[task], train_counts.tolist())))
    return partitions


def write_partitions(partitions: Sequence[ClientPartition], out_dir: Path) -> list[Path]:
    """Write ``out_dir/<client_id>/{train.jsonl,val.jsonl,meta.json}``; return the client dirs."""
    out_dir = Path(out_dir)
    dirs: list[Path] = []
    for part in partitions:
        client_dir = out_dir / part.client_id
        client_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(client_dir / "train.jsonl", part.train)
        write_jsonl(client_dir / "val.jsonl", part.val)
        meta: dict[str, Any] = {
            "client_id": part.client_id,
            "task": part.task,
            "labels": part.labels,
            "num_train": len(part.train),
            "num_val": len(part.val),
            "label_counts": part.label_counts("train"),
            "val_label_counts": part.label_counts("val"),
        }
        (client_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        dirs.append(client_dir)
        logger.info("wrote %s (%d train / %d val)", client_dir, len(part.train), len(part.val))
    return dirs


def read_partition_meta(client_dir: Path) -> dict[str, Any]:
    """Read ``meta.json`` from a client directory written by :func:`write_partitions`."""
    path = Path(client_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {META_FILE} in {client_dir}")
    meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return meta
