"""System test: coordinator + 4 worker processes with `strategy: fedtree` on the real MiniLM:
2 warmup rounds + 2 tree rounds, the tree persisted, an exported adapter loads in peft."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from demo_runner import run_demo

from coordinator.state import StateStore


@pytest.mark.system
@pytest.mark.corpora
@pytest.mark.minilm
def test_fedtree_four_worker_processes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    stdout = run_demo(
        out,
        "--strategy",
        "fedtree",
        "--workers",
        "4",
        "--rounds",
        "4",
        "--warmup-rounds",
        "2",
        "--train-size",
        "32",
        "--val-size",
        "16",
        "--local-epochs",
        "1",
        "--tasks",
        "bbc_news,wordnet_pos",
    )
    assert "client tree built after round 2" in stdout and "per-layer cluster counts" in stdout

    store = StateStore(out / "state")
    meta = store.get("strategy_meta")
    assert sorted(meta["tree"]["leaves"]) == [f"client-{i}" for i in range(4)]
    assert len(meta["cuts"]) == 6 and meta["cuts"] == sorted(meta["cuts"])
    assert sorted(store.evaluations()) == [1, 2, 3, 4]
    store.close()

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from worker.data.partition import read_partition_meta
    from worker.model import default_model_path

    labels = read_partition_meta(out / "data" / "client-0")["labels"]
    base = AutoModelForSequenceClassification.from_pretrained(
        default_model_path(), num_labels=len(labels), ignore_mismatched_sizes=True
    )
    model = PeftModel.from_pretrained(base, str(out / "workers" / "client-0" / "adapter")).eval()
    assert model.peft_config["default"].r == 16  # rank 2r: cluster and external experts side by side
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[101, 2023, 2003, 102]])).logits
    assert logits.shape == (1, len(labels)) and torch.isfinite(logits).all()
