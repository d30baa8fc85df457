"""Unit tests for the heterogeneous-federation partitioner (synthetic corpora only)."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from worker.data import ClientPartition, Example, partition_federation, read_examples
from worker.data.partition import read_partition_meta, write_partitions


def synthetic_loader(name: str) -> list[Example]:
    """Task ``<name>`` with 5 labels x 400 examples (label 'e' only 60, to force redistribution)."""
    sizes = {"a": 400, "b": 400, "c": 400, "d": 400, "e": 60}
    return [Example(f"{name}-{label}-{i}", label) for label, n in sizes.items() for i in range(n)]


def run(**kwargs: object) -> list[ClientPartition]:
    args: dict[str, object] = dict(
        tasks=["t1", "t2"], num_clients=6, train_size=80, val_size=40, alpha=0.5, seed=0, loader=synthetic_loader
    )
    args.update(kwargs)
    return partition_federation(**args)  # type: ignore[arg-type]


def distribution(part: ClientPartition) -> np.ndarray:
    counts = Counter(ex.label for ex in part.train)
    return np.array([counts.get(label, 0) for label in part.labels], dtype=float) / len(part.train)


def mean_tv(parts: list[ClientPartition]) -> float:
    pairs = list(itertools.combinations(parts, 2))
    return float(np.mean([0.5 * np.abs(distribution(a) - distribution(b)).sum() for a, b in pairs]))


def test_deterministic_for_same_seed() -> None:
    assert run(seed=3) == run(seed=3)


def test_different_seed_differs() -> None:
    assert [p.train for p in run(seed=1)] != [p.train for p in run(seed=2)]


@pytest.mark.parametrize("alpha", [0.05, 0.5, None])
def test_sizes_exact_and_no_overlap(alpha: float | None) -> None:
    parts = run(alpha=alpha, num_clients=5, train_size=150, val_size=50)
    seen: set[str] = set()
    for part in parts:
        assert len(part.train) == 150 and len(part.val) == 50
        texts = [ex.text for ex in part.train + part.val]
        assert len(set(texts)) == len(texts)
        assert seen.isdisjoint(texts)
        seen.update(texts)
        assert all(ex.text.startswith(part.task + "-") for ex in part.train + part.val)


def test_task_assignment_and_labels() -> None:
    parts = run(tasks=["t1", "t2", "t3"], num_clients=7)
    assert [p.client_id for p in parts] == [f"client-{i}" for i in range(7)]
    assert [p.task for p in parts] == ["t1", "t1", "t1", "t2", "t2", "t3", "t3"]
    assert all(p.labels == ["a", "b", "c", "d", "e"] for p in parts)


def test_too_few_clients_or_too_small_corpus() -> None:
    with pytest.raises(ValueError, match="num_clients"):
        run(tasks=["t1", "t2", "t3"], num_clients=2)
    with pytest.raises(ValueError, match="t1"):
        run(tasks=["t1"], num_clients=3, train_size=500, val_size=100)


def test_corpus_exhausted_exactly() -> None:
    parts = run(tasks=["t1"], num_clients=4, train_size=330, val_size=85, alpha=0.1)
    assert sum(len(p.train) + len(p.val) for p in parts) == 1660
    assert {ex.text for p in parts for ex in p.train + p.val} == {ex.text for ex in synthetic_loader("t1")}


def test_label_skew_with_small_alpha() -> None:
    parts = run(tasks=["t1"], num_clients=6, train_size=100, val_size=20, alpha=0.1, seed=0)
    assert mean_tv(parts) > 0.3


def test_iid_near_uniform() -> None:
    parts = run(tasks=["t1"], num_clients=2, train_size=100, val_size=50, alpha=None)
    for part in parts:
        assert np.abs(distribution(part) - 0.2).max() <= 0.02
    assert mean_tv(parts) < 0.05


def test_val_follows_train_distribution() -> None:
    for part in run(tasks=["t1"], num_clients=2, alpha=0.3, train_size=100, val_size=100):
        train, val = Counter(ex.label for ex in part.train), Counter(ex.label for ex in part.val)
        for label in part.labels:
            if label != "e":  # the small label may run out and be redistributed
                assert abs(train[label] - val[label]) <= 15


def test_write_and_read_partitions(tmp_path: Path) -> None:
    parts = run(num_clients=2, train_size=30, val_size=10)
    dirs = write_partitions(parts, tmp_path / "out")
    assert [d.name for d in dirs] == ["client-0", "client-1"]
    for part, client_dir in zip(parts, dirs):
        assert sorted(p.name for p in client_dir.iterdir()) == ["meta.json", "train.jsonl", "val.jsonl"]
        assert read_examples(client_dir / "train.jsonl") == part.train
        assert read_examples(client_dir / "val.jsonl") == part.val
        meta = read_partition_meta(client_dir)
        assert meta["client_id"] == part.client_id and meta["task"] == part.task
        assert meta["labels"] == part.labels and meta["num_train"] == 30 and meta["num_val"] == 10
        assert sum(meta["label_counts"].values()) == 30
