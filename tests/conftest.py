"""Shared fixtures: a tiny BERT built from a config, small private datasets, a coordinator factory."""

from __future__ import annotations

import shutil
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so tests anywhere can import testdata

from testdata import write_client_data  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def minilm_path() -> Path:
    from worker.model import default_model_path

    return default_model_path()


def make_tiny_bert(path: Path, **overrides: float) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) saved as a Hugging Face directory.

    It borrows MiniLM's tokenizer files so that tokenisation is real and offline.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **overrides,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    for name in TOKENIZER_FILES:
        src = minilm_path() / name
        if src.exists():
            shutil.copy(src, path / name)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_model_dir_no_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT without dropout: worker threads of one process share torch's global RNG, so
    training with dropout is not repeatable there; without it every worker's run is."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


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


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer llama (hidden 32) with a small byte-level BPE tokenizer, built offline."""
    from tinyllama import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
