"""Head rows keyed by label name: shared labels share rows, different labels never collide."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.config import DataConfig, FedTreeConfig, LoraConfig, TrainConfig
from worker.local_data import load_local_data
from worker.mixed import MixedExperts
from worker.model import build_model, label_key

LORA = LoraConfig(rank=2, alpha=4.0, target_modules=("query", "value"))


def _rows(model_dir: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    lm = build_model(model_dir, keys, LORA, seed=3, train_head=False)
    weight = dict(lm.model.named_parameters())["base_model.model.classifier.weight"]
    return {k: weight[i].detach().clone() for i, k in enumerate(keys)}


def test_rows_follow_names_not_indices(tiny_model_dir: Path) -> None:
    a = _rows(tiny_model_dir, ("news/sport", "news/tech"))
    b = _rows(tiny_model_dir, ("news/tech", "news/politics", "news/sport"))
    assert torch.equal(a["news/sport"], b["news/sport"])  # same label, other index
    assert torch.equal(a["news/tech"], b["news/tech"])
    c = _rows(tiny_model_dir, ("sentiment/0", "sentiment/1"))
    d = _rows(tiny_model_dir, ("topic/0", "topic/1"))
    # the old index-keyed init gave both tasks' label 0 the same row
    assert not torch.allclose(c["sentiment/0"], d["topic/0"])
    assert not torch.allclose(a["news/sport"], a["news/tech"])


def test_fingerprint_does_not_depend_on_labels(tiny_model_dir: Path) -> None:
    one = build_model(tiny_model_dir, ("x/a", "x/b"), LORA, seed=3, train_head=True)
    two = build_model(tiny_model_dir, ("y/c", "y/d", "y/e"), LORA, seed=3, train_head=True)
    assert one.fingerprint == two.fingerprint


def test_task_namespace_from_meta_and_config(tmp_path: Path) -> None:
    d = tmp_path / "part"
    d.mkdir()
    (d / "train.jsonl").write_text(json.dumps({"text": "good", "label": "1"}) + "\n")
    (d / "val.jsonl").write_text(json.dumps({"text": "bad", "label": "0"}) + "\n")
    (d / "meta.json").write_text(json.dumps({"task": "sentiment", "labels": ["0", "1"]}))
    assert load_local_data(DataConfig(dir=d)).label_keys == ("sentiment/0", "sentiment/1")
    assert load_local_data(DataConfig(dir=d, task="reviews")).label_keys == ("reviews/0", "reviews/1")
    plain = load_local_data(DataConfig(train_path=d / "train.jsonl", val_path=d / "val.jsonl"))
    assert plain.label_keys == ("0", "1")
    assert label_key("pos", None) == "pos"


def test_head_mode_and_deprecated_train_head() -> None:
    assert TrainConfig().head_mode == "local"
    assert TrainConfig.model_validate({"train_head": False}).head_mode == "frozen"
    assert TrainConfig.model_validate({"train_head": True}).head_mode == "local"
    assert TrainConfig(head_mode="cluster").train_head
    assert not TrainConfig(head_mode="frozen").train_head
    with pytest.raises(ValueError):
        TrainConfig.model_validate({"train_head": True, "head_mode": "frozen"})


def test_lambda_init_sets_theta(tiny_model_dir: Path) -> None:
    lm = build_model(tiny_model_dir, ("a", "b"), LORA, seed=0, train_head=True)
    mixed = MixedExperts(lm, LORA, lambda_init=0.8)
    mixed.pinned.clear()
    assert all(abs(v - 0.8) < 1e-6 for v in mixed.lams().values())
    with pytest.raises(ValueError):
        FedTreeConfig(lambda_init=1.0)


def test_run_spec_carries_head_mode_and_lambda_init() -> None:
    from common.config import RunConfig
    from common.serde import run_from_proto, run_to_proto

    run = RunConfig.model_validate({"train": {"head_mode": "cluster"}, "fedtree": {"lambda_init": 0.9}})
    assert run_from_proto(run_to_proto("r", run)) == ("r", run)
    old = run_to_proto("r", RunConfig.model_validate({"train": {"head_mode": "frozen"}}))
    old.train.head_mode = ""  # a coordinator that predates head_mode sends only train_head
    assert run_from_proto(old)[1].train.head_mode == "frozen"
