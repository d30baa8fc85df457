"""Shared fixtures: a tiny BERT built from a config, small private datasets, a coordinator factory."""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def minilm_path() -> Path:
    from worker.model import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) saved as a Hugging Face directory.

    It borrows MiniLM's tokenizer files so that tokenisation is real and offline.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    for name in TOKENIZER_FILES:
        src = minilm_path() / name
        if src.exists():
            shutil.copy(src, path / name)
    return path


WORDS = {
    "sports": "match goal team score league player coach win",
    "tech": "software chip computer network code data robot phone",
    "food": "bread soup cheese fruit dinner recipe bake spice",
}


def write_client_data(root: Path, labels: tuple[str, ...], n_train: int = 24, n_val: int = 12, seed: int = 0) -> Path:
    """A tiny, learnable private dataset: texts made of label-specific words."""
    import random

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        with open(root / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                label = labels[i % len(labels)]
                words = WORDS[label].split()
                fh.write(json.dumps({"text": " ".join(rng.choices(words, k=6)), "label": label}) + "\n")
    (root / "meta.json").write_text(json.dumps({"labels": sorted(labels)}))
    return root


@pytest.fixture
def client_data(tmp_path: Path) -> Callable[[str, tuple[str, ...]], Path]:
    def make(name: str, labels: tuple[str, ...] = ("sports", "tech")) -> Path:
        return write_client_data(tmp_path / "data" / name, labels, seed=zlib.crc32(name.encode()))

    return make


@pytest.fixture
def coordinator_factory(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Start real coordinators on port 0; all are stopped at teardown."""
    from common.config import CoordinatorConfig, RunConfig
    from coordinator.server import Coordinator

    started: list[Coordinator] = []

    def make(state_dir: Path | None = None, **run_kwargs: object) -> Coordinator:
        run = RunConfig(**{"rounds": 2, "min_workers": 2, "round_deadline_s": 60, **run_kwargs})  # type: ignore[arg-type]
        cfg = CoordinatorConfig(
            host="127.0.0.1", port=0, state_dir=state_dir or tmp_path / "state", run=run, long_poll_s=1.0, insecure=True
        )
        coordinator = Coordinator(cfg)
        coordinator.start()
        started.append(coordinator)
        return coordinator

    yield make
    for coordinator in started:
        coordinator.stop(grace=0.5)
