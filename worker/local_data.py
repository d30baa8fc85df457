"""Load a worker's private data as configured: a partition directory or explicit files.

Labelled examples (classification) or prompt/response pairs (causal_lm): `load_any_data` tells
them apart by the partition's meta.json ("task_type": "causal_lm") or else by the first training
record (it has the prompt and response fields and no text field)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from common.config import DataConfig
from common.errors import ConfigError
from worker.data import Example, read_examples
from worker.data.partition import read_partition_meta
from worker.data.prompts import PromptExample, first_record_keys, read_prompt_examples
from worker.model import label_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalData:
    train: list[Example]
    val: list[Example]
    labels: tuple[str, ...]
    task: str | None = None  # the labels' namespace (head rows are keyed task/label)

    @property
    def label_ids(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def label_keys(self) -> tuple[str, ...]:
        return tuple(label_key(label, self.task) for label in self.labels)


@dataclass(frozen=True)
class PromptData:
    """A causal_lm worker's private data: prompt/response pairs (no labels)."""

    train: list[PromptExample]
    val: list[PromptExample]
    labels: tuple[str, ...] = ()
    label_keys: tuple[str, ...] = ()

    @property
    def label_ids(self) -> dict[str, int]:
        return {}


def _paths(cfg: DataConfig) -> tuple[Path, Path | None]:
    train_path = cfg.train_path or (cfg.dir / "train.jsonl" if cfg.dir else None)
    val_path = cfg.val_path or (cfg.dir / "val.jsonl" if cfg.dir else None)
    if train_path is None:
        raise ConfigError("worker has no data: set data.dir (a prepared partition) or data.train_path")
    for path in (train_path, val_path):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"data file {path} does not exist")
    return Path(train_path), Path(val_path) if val_path else None


def is_prompt_data(cfg: DataConfig) -> bool:
    """Does the configured data hold prompt/response pairs (causal_lm) rather than labelled texts?"""
    if cfg.dir is not None and (cfg.dir / "meta.json").exists():
        task_type = read_partition_meta(cfg.dir).get("task_type")
        if task_type is not None:
            return bool(task_type == "causal_lm")
    train_path, _ = _paths(cfg)
    keys = first_record_keys(train_path)
    return {cfg.prompt_field, cfg.response_field} <= keys and cfg.text_field not in keys


def load_any_data(cfg: DataConfig) -> LocalData | PromptData:
    """Labelled examples or prompt/response pairs, whichever the configured data holds."""
    return load_prompt_data(cfg) if is_prompt_data(cfg) else load_local_data(cfg)


def load_prompt_data(cfg: DataConfig) -> PromptData:
    train_path, val_path = _paths(cfg)
    try:
        train = read_prompt_examples(train_path, cfg.prompt_field, cfg.response_field)
        val = read_prompt_examples(val_path, cfg.prompt_field, cfg.response_field) if val_path else []
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not train:
        raise ConfigError(f"{train_path} holds no examples")
    return PromptData(train, val)


def load_local_data(cfg: DataConfig) -> LocalData:
    train_path, val_path = _paths(cfg)
    try:
        train = read_examples(Path(train_path), cfg.text_field, cfg.label_field)
        val = read_examples(Path(val_path), cfg.text_field, cfg.label_field) if val_path else []
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not train:
        raise ConfigError(f"{train_path} holds no examples")
    labels = cfg.labels
    meta = read_partition_meta(cfg.dir) if cfg.dir is not None and (cfg.dir / "meta.json").exists() else {}
    if labels is None and meta:
        labels = tuple(meta["labels"])
    task = cfg.task or meta.get("task")
    if labels is None:
        labels = tuple(sorted({e.label for e in train} | {e.label for e in val}))
    unknown = sorted({e.label for e in train + val} - set(labels))
    if unknown:
        raise ConfigError(f"labels {unknown} in the data are not in the configured label set {list(labels)}")
    if task is None and any(_bare(label) for label in labels):
        log.warning(
            "labels %s have no task namespace: their head rows collide with any other task's labels of the same "
            "names; set data.task (or 'task' in meta.json)",
            list(labels)[:5],
        )
    return LocalData(train, val, tuple(labels), task)


def _bare(label: str) -> bool:
    """A label name that other tasks likely use too: an integer, or a one-character name."""
    return label.strip().lstrip("-").isdigit() or len(label.strip()) <= 1
