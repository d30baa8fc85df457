"""Domain dataclasses that cross the coordinator/worker boundary (protobuf stays in serde)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from common.schema import Schema, UploadSpec
from common.version import PROTOCOL_VERSION


class TaskKind(enum.IntEnum):
    """Values match the proto enum fedtree.v1.TaskKind."""

    TRAIN = 1
    EVALUATE = 2
    WAIT = 3
    DONE = 4


@dataclass(frozen=True)
class Task:
    kind: TaskKind
    round: int = 0
    deadline_unix: float = 0.0
    upload: UploadSpec | None = None


@dataclass(frozen=True)
class JoinRequest:
    worker_id: str
    fingerprint: str
    num_train_examples: int
    schema: Schema
    version: str = PROTOCOL_VERSION  # of the wire protocol the worker speaks (common/version.py)
    layer_prefix: str = ""


@dataclass(frozen=True)
class PushHeader:
    worker_id: str
    round: int
    upload_id: str
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PushResult:
    accepted: bool
    round: int
    layers_received: int
    duplicate: bool = False
