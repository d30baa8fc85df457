"""Load a worker's private data as configured: a partition directory or explicit files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.config import DataConfig
from common.errors import ConfigError
from worker.data import Example, read_examples
from worker.data.partition import read_partition_meta


@dataclass(frozen=True)
class LocalData:
    train: list[Example]
    val: list[Example]
    labels: tuple[str, ...]

    @property
    def label_ids(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


def load_local_data(cfg: DataConfig) -> LocalData:
    train_path = cfg.train_path or (cfg.dir / "train.jsonl" if cfg.dir else None)
    val_path = cfg.val_path or (cfg.dir / "val.jsonl" if cfg.dir else None)
    if train_path is None:
        raise ConfigError("worker has no data: set data.dir (a prepared partition) or data.train_path")
    for path in (train_path, val_path):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"data file {path} does not exist")
    try:
        train = read_examples(Path(train_path), cfg.text_field, cfg.label_field)
        val = read_examples(Path(val_path), cfg.text_field, cfg.label_field) if val_path else []
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not train:
        raise ConfigError(f"{train_path} holds no examples")
    labels = cfg.labels
    if labels is None and cfg.dir is not None and (cfg.dir / "meta.json").exists():
        labels = tuple(read_partition_meta(cfg.dir)["labels"])
    if labels is None:
        labels = tuple(sorted({e.label for e in train} | {e.label for e in val}))
    unknown = sorted({e.label for e in train + val} - set(labels))
    if unknown:
        raise ConfigError(f"labels {unknown} in the data are not in the configured label set {list(labels)}")
    return LocalData(train, val, tuple(labels))
