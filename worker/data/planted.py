"""Planted federations: clients whose true grouping (task, label-skew subgroup) is known.

Each task's clients form ``subgroups_per_task`` skew subgroups of ``clients_per_subgroup``
clients. Skew subgroup ``g`` of EVERY task concentrates its examples on the label INDICES
``{2g, 2g + 1}`` of its task's sorted labels (``concentration`` of the drawn mass, split evenly)
and spreads the rest evenly over the other labels. The same indices in every task is the
adversarial case for classifier heads whose rows are keyed by index: then subgroup g of every task
pushes its LoRA B towards the same head rows, and a tree over B may split by skew before task.

The clients of a subgroup draw their label counts independently (multinomial) from the same
proportions, after a floor of ``min_per_label`` training examples per label (so every client
sees its task's full label set, also when it reads plain files without a label list); the
validation split draws from the same proportions. Examples are sampled without replacement: no
example is shared by two clients or by a client's train and val. All randomness comes from one
``numpy.random.default_rng(seed)``.

``planted_federation`` returns the clients; ``index_keyed`` relabels them with integer label
names (the colliding labelling); ``write_planted_dirs`` writes partition directories (meta.json
with or without the task namespace) and ``write_planted_jsonl`` plain JSONL files for the
``data.train_path`` / ``data.val_path`` loader.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from worker.data.corpora import load_corpus
from worker.data.files import write_jsonl
from worker.data.partition import META_FILE
from worker.data.types import Example

log = logging.getLogger(__name__)

__all__ = [
    "PlantedClient",
    "focus_share",
    "index_keyed",
    "planted_federation",
    "skew_proportions",
    "write_planted_dirs",
    "write_planted_jsonl",
]


@dataclass(frozen=True)
class PlantedClient:
    """One client of a planted federation and its ground truth."""

    client_id: str
    task: str
    subgroup: int  # global subgroup id: task index * subgroups_per_task + skew
    skew: int  # g inside its task: concentrated on label indices {2g, 2g + 1}
    train: list[Example]
    val: list[Example]
    labels: list[str]  # the task's sorted label names (the head's row order)

    def label_counts(self, split: str = "train") -> dict[str, int]:
        counts = Counter(ex.label for ex in getattr(self, split))
        return {label: counts.get(label, 0) for label in self.labels}


def skew_proportions(n_labels: int, skew: int, concentration: float) -> np.ndarray:
    """Label proportions of skew subgroup ``skew``: ``concentration`` on indices {2g, 2g+1}, the rest even."""
    focus = [2 * skew, 2 * skew + 1]
    if focus[1] >= n_labels:
        raise ValueError(f"skew subgroup {skew} needs label indices {focus}, the task has {n_labels} labels")
    if not 0 < concentration <= 1:
        raise ValueError(f"concentration must be in (0, 1], got {concentration}")
    others = n_labels - 2
    props = np.full(n_labels, (1.0 - concentration) / others if others else 0.0)
    props[focus] = concentration / 2 if others else 0.5
    return props / props.sum()


def focus_share(client: PlantedClient, split: str = "train") -> float:
    """Fraction of the client's ``split`` on its subgroup's two focus labels."""
    examples = getattr(client, split)
    focus = {client.labels[2 * client.skew], client.labels[2 * client.skew + 1]}
    return sum(ex.label in focus for ex in examples) / max(1, len(examples))


def _draw(n: int, props: np.ndarray, room: np.ndarray, floor: int, rng: np.random.Generator) -> np.ndarray:
    """Per-label counts summing to ``n``: ``floor`` each, the rest multinomial(props), never above ``room``."""
    counts = np.minimum(np.full(len(props), floor, dtype=np.int64), room)
    counts += rng.multinomial(n - int(counts.sum()), props)
    if (counts > room).any():
        log.warning(
            "labels %s ran out of examples: their excess is redistributed (the planted skew weakens)",
            np.flatnonzero(counts > room).tolist(),
        )
    while (counts > room).any():  # a label ran out: its excess goes to the labels with room left
        excess = int((counts - room).clip(min=0).sum())
        counts = np.minimum(counts, room)
        open_ = room > counts
        if not open_.any():
            raise ValueError(f"cannot draw {n} examples: only {int(room.sum())} left")
        weights = np.where(open_, props + 1e-12, 0.0)
        counts += rng.multinomial(excess, weights / weights.sum())
    return counts


def planted_federation(
    tasks: Sequence[str],
    subgroups_per_task: int = 2,
    clients_per_subgroup: int = 2,
    train_size: int = 64,
    val_size: int = 16,
    concentration: float = 0.9,
    seed: int = 0,
    min_per_label: int = 1,
    loader: Callable[[str], list[Example]] = load_corpus,
) -> list[PlantedClient]:
    """Clients ``client-00``, ``client-01``, ... in (task, skew, client) order, with their ground truth."""
    tasks = list(tasks)
    if not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"need distinct tasks, got {tasks}")
    if subgroups_per_task < 1 or clients_per_subgroup < 1:
        raise ValueError("need subgroups_per_task >= 1 and clients_per_subgroup >= 1")
    if train_size < 1 or val_size < 0 or min_per_label < 0:
        raise ValueError(
            f"need train_size >= 1, val_size >= 0, min_per_label >= 0; got {train_size}, {val_size}, {min_per_label}"
        )
    rng = np.random.default_rng(seed)
    width = len(str(len(tasks) * subgroups_per_task * clients_per_subgroup - 1))
    clients: list[PlantedClient] = []
    for t, task in enumerate(tasks):
        corpus = loader(task)
        labels = sorted({ex.label for ex in corpus})
        if train_size < min_per_label * len(labels):
            raise ValueError(f"train_size {train_size} < {min_per_label} x {len(labels)} labels of {task!r}")
        by_label: dict[str, list[Example]] = {label: [] for label in labels}
        for ex in corpus:
            by_label[ex.label].append(ex)
        pools = [[group[i] for i in rng.permutation(len(group))] for group in by_label.values()]
        for g in range(subgroups_per_task):
            props = skew_proportions(len(labels), g, concentration)
            for _ in range(clients_per_subgroup):
                splits = []
                for n, floor in ((train_size, min_per_label), (val_size, 0)):
                    room = np.array([len(pool) for pool in pools], dtype=np.int64)
                    counts = _draw(n, props, room, floor, rng)
                    picked: list[Example] = []
                    for pool, count in zip(pools, counts.tolist()):
                        picked.extend(pool[len(pool) - count :])
                        del pool[len(pool) - count :]
                    splits.append([picked[i] for i in rng.permutation(len(picked))])
                client_id = f"client-{len(clients):0{width}d}"
                subgroup = t * subgroups_per_task + g
                clients.append(PlantedClient(client_id, task, subgroup, g, splits[0], splits[1], list(labels)))
    return clients


def index_keyed(clients: Sequence[PlantedClient]) -> list[PlantedClient]:
    """The same clients with integer label names "0", "1", ... (label index in the task's sorted labels).

    Written without a task namespace this is the colliding labelling: label i of every task gets
    the same head row.
    """
    out = []
    for c in clients:
        ids = {label: str(i) for i, label in enumerate(c.labels)}
        train = [Example(ex.text, ids[ex.label]) for ex in c.train]
        val = [Example(ex.text, ids[ex.label]) for ex in c.val]
        out.append(replace(c, train=train, val=val, labels=[ids[label] for label in c.labels]))
    return out


def write_planted_dirs(clients: Sequence[PlantedClient], out_dir: Path, namespace: bool = True) -> dict[str, Path]:
    """Partition directories ``out_dir/<client_id>/{train.jsonl,val.jsonl,meta.json}``.

    meta.json names the task (the labels' namespace) only when ``namespace``; the ground truth
    (subgroup) is not written.
    """
    dirs: dict[str, Path] = {}
    for c in clients:
        d = Path(out_dir) / c.client_id
        d.mkdir(parents=True, exist_ok=True)
        write_jsonl(d / "train.jsonl", c.train)
        write_jsonl(d / "val.jsonl", c.val)
        meta: dict[str, Any] = {"client_id": c.client_id}
        if namespace:
            meta["task"] = c.task
        meta.update(labels=c.labels, num_train=len(c.train), num_val=len(c.val), label_counts=c.label_counts())
        (d / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        dirs[c.client_id] = d
    return dirs


def write_planted_jsonl(clients: Sequence[PlantedClient], out_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Plain JSONL files ``out_dir/<client_id>.{train,val}.jsonl`` ({"text", "label"} per line), no meta."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths: dict[str, tuple[Path, Path]] = {}
    for c in clients:
        train, val = Path(out_dir) / f"{c.client_id}.train.jsonl", Path(out_dir) / f"{c.client_id}.val.jsonl"
        write_jsonl(train, c.train)
        write_jsonl(val, c.val)
        paths[c.client_id] = (train, val)
    return paths
