"""What the round engine keeps and hands out (coordinator/engine.py): a worker's record, the open
round, a push's admission ticket and the consistent snapshot the admin views read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.config import RunConfig
from common.schema import Schema, UploadSpec
from common.types import PushHeader
from coordinator.strategies.base import TreeView

# What a worker may say it is doing in a heartbeat (worker/runner.py), as the admin's one state
# enum names it (common/admin_types.py WorkerState); anything else keeps the current activity.
# lost and evicted are the coordinator's to say, never a worker's.
REPORTED_ACTIVITIES = {a: a for a in ("joined", "pulling", "evaluating", "training", "pushing", "idle")} | {"starting": "joined"}


@dataclass
class WorkerInfo:
    worker_id: str
    num_train_examples: int
    last_seen: float
    activity: str = "joined"  # joined / training / evaluating / pulling / pushing / idle / lost / evicted
    address: str = ""
    rounds_done: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    round_s: float = 0.0  # how long its last push took from its round's opening: the round-time estimate

    def counters(self) -> dict[str, Any]:
        """What the admin shows of it beyond its liveness, persisted with every closed round so that
        a restarted coordinator shows it too, as of that round (`restore_counters` reads it back)."""
        return {
            "address": self.address,
            "rounds_done": self.rounds_done,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "last_metrics": self.last_metrics,
            "round_s": self.round_s,
        }

    def restore_counters(self, saved: Mapping[str, Any]) -> None:
        self.address = str(saved.get("address", ""))
        self.rounds_done, self.bytes_sent, self.bytes_received = (
            int(saved.get(k, 0)) for k in ("rounds_done", "bytes_sent", "bytes_received")
        )
        self.last_metrics = {k: float(v) for k, v in (saved.get("last_metrics") or {}).items()}
        self.round_s = float(saved.get("round_s", 0.0))


@dataclass
class RoundInfo:
    round: int
    started_at: float
    deadline: float
    participants: dict[str, int]  # worker -> example count
    pushed: dict[str, str] = field(default_factory=dict)  # worker -> upload id
    evaluating: bool = False  # the final evaluation pass after the last round

    def time_left(self, workers: Mapping[str, WorkerInfo], now: float) -> float | None:
        """Estimated from the workers it still waits for: each took `round_s` from opening to push
        in its last round; None until they all have such a time."""
        waiting = [workers[w].round_s for w in self.participants if w not in self.pushed and w in workers]
        if not waiting or min(waiting) <= 0:
            return None
        return max(0.0, max(waiting) - (now - self.started_at))


@dataclass(frozen=True)
class PushTicket:
    """An admitted push (`RoundEngine.begin_push`): who pushes which round under which upload id,
    and what it must carry, fixed once; `RoundEngine.commit` folds the received update under it."""

    header: PushHeader
    spec: UploadSpec
    expected: Schema  # layer -> tensors the push must carry (HEAD_LAYER -> {}: the head blob)

    @property
    def worker_id(self) -> str:
        return self.header.worker_id

    @property
    def round(self) -> int:
        return self.header.round

    @property
    def upload_id(self) -> str:
        return self.header.upload_id


@dataclass(frozen=True)
class EngineSnapshot:
    """A consistent copy of the engine's state, taken under its lock (`RoundEngine.snapshot`)."""

    run_id: str
    run: RunConfig
    last_closed: int
    done: bool
    paused: bool
    workers: tuple[WorkerInfo, ...]  # copies, in worker id order
    current: RoundInfo | None  # a copy of the open round
    tree: TreeView | None  # the strategy's `tree_view()`; None: it builds no client tree (or no worker joined yet)
    remaining_s: float | None = None  # estimate of the open round's time left (RoundEngine.remaining_s)
