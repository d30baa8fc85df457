"""Unit tests for the planted-federation partitioner (synthetic corpora only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.config import DataConfig
from worker.data import Example
from worker.data.planted import (
    focus_share,
    index_keyed,
    planted_federation,
    skew_proportions,
    write_planted_dirs,
    write_planted_jsonl,
)
from worker.local_data import load_local_data


def loader(name: str) -> list[Example]:
    """Task ``<name>``: 6 labels (named so that sorted order is f0 < ... < f5) x 300 examples."""
    return [Example(f"{name}-f{k}-{i}", f"{name[0]}{k}") for k in range(6) for i in range(300)]


def run(**kwargs: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = dict(tasks=["alpha", "beta"], train_size=64, val_size=16, seed=0, loader=loader)
    args.update(kwargs)
    return planted_federation(**args)  # type: ignore[arg-type]


def test_structure_and_ground_truth() -> None:
    clients = run(subgroups_per_task=3, clients_per_subgroup=2)
    assert [c.client_id for c in clients] == [f"client-{i:02d}" for i in range(12)]
    assert [c.task for c in clients] == ["alpha"] * 6 + ["beta"] * 6
    assert [c.skew for c in clients] == [0, 0, 1, 1, 2, 2] * 2
    assert [c.subgroup for c in clients] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert clients[0].labels == [f"a{k}" for k in range(6)] and clients[6].labels == [f"b{k}" for k in range(6)]
    for c in clients:
        assert len(c.train) == 64 and len(c.val) == 16
        assert min(c.label_counts("train").values()) >= 1  # every label seen in train
        assert all(ex.text.startswith(c.task) for ex in c.train + c.val)


def test_skew_on_the_same_label_indices_in_every_task() -> None:
    clients = run(subgroups_per_task=2, clients_per_subgroup=3, train_size=100, val_size=30)
    for c in clients:
        focus = {c.labels[2 * c.skew], c.labels[2 * c.skew + 1]}
        assert focus_share(c) == sum(ex.label in focus for ex in c.train) / 100
        assert 0.8 <= focus_share(c) <= 0.97
        assert 0.7 <= focus_share(c, "val") <= 1.0
    # clients of a subgroup draw independently: same proportions, different counts
    assert clients[0].label_counts() != clients[1].label_counts()


def test_disjoint_and_deterministic() -> None:
    a, b = run(seed=1), run(seed=1)
    assert a == b
    assert [c.train for c in run(seed=2)] != [c.train for c in a]
    texts = [ex.text for c in a for ex in c.train + c.val]
    assert len(texts) == len(set(texts))


def test_skew_proportions() -> None:
    p = skew_proportions(6, 1, 0.9)
    np.testing.assert_allclose(p, [0.025, 0.025, 0.45, 0.45, 0.025, 0.025])
    with pytest.raises(ValueError, match="needs label indices"):
        skew_proportions(5, 2, 0.9)
    with pytest.raises(ValueError, match="needs label indices"):
        run(subgroups_per_task=4)


def test_exhausted_label_redistributes(caplog: pytest.LogCaptureFixture) -> None:
    def small(name: str) -> list[Example]:  # label x0 has only 30 examples
        return [Example(f"{name}-{k}-{i}", f"x{k}") for k in range(4) for i in range(30 if k == 0 else 500)]

    clients = planted_federation(["t"], 2, 2, train_size=40, val_size=10, loader=small)
    counts = [c.label_counts()["x0"] + c.label_counts("val")["x0"] for c in clients]
    assert sum(counts) <= 30 and all(len(c.train) == 40 and len(c.val) == 10 for c in clients)
    assert "ran out of examples" in caplog.text


def test_index_keyed_and_writers(tmp_path: Path) -> None:
    clients = run()
    idx = index_keyed(clients)
    assert idx[0].labels == ["0", "1", "2", "3", "4", "5"]
    assert [ex.text for ex in idx[0].train] == [ex.text for ex in clients[0].train]
    assert [ex.label for ex in idx[0].train] == [str(clients[0].labels.index(ex.label)) for ex in clients[0].train]

    named = write_planted_dirs(clients, tmp_path / "named")
    meta = json.loads((named[clients[0].client_id] / "meta.json").read_text())
    assert meta["task"] == "alpha" and meta["labels"] == clients[0].labels and "subgroup" not in meta
    data = load_local_data(DataConfig(dir=named[clients[0].client_id]))
    assert data.task == "alpha" and data.label_keys[0] == "alpha/a0"

    bare = write_planted_dirs(idx, tmp_path / "bare", namespace=False)
    data = load_local_data(DataConfig(dir=bare[clients[0].client_id]))
    assert data.task is None and data.label_keys == ("0", "1", "2", "3", "4", "5")  # collides with beta's

    files = write_planted_jsonl(clients, tmp_path / "jsonl")
    train, val = files[clients[6].client_id]
    data = load_local_data(DataConfig(train_path=train, val_path=val, task="beta"))
    assert data.labels == tuple(clients[6].labels) and data.label_keys[0] == "beta/b0"
    assert len(data.train) == 64 and len(data.val) == 16
