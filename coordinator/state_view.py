"""A read-only look at a coordinator's state directory, and the restore it shares with the engine.

`StateView.open(state_dir)` is what export and any offline inspection use: SQLite opened
read-only, the strategy restored in memory from the last checkpoint (no spill directory), no
write of any kind -- so it is safe against the state of a live coordinator in the middle of a
round. Only the serving coordinator takes a state directory over, with `RoundEngine.resume()`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydantic import ValidationError

from common.config import CoordinatorConfig, RunConfig
from common.errors import ConfigError, FailedPrecondition, NotFound
from common.schema import Schema
from coordinator.state import StateStore
from coordinator.strategies import Strategy, create_strategy
from coordinator.strategies.base import PersonalAdapter

# A live coordinator may close rounds (and rotate the checkpoint we are about to read away) while
# we read: the read starts over this many times before giving up.
RESTORE_ATTEMPTS = 3


def restore_strategy(
    store: StateStore, run: RunConfig, schema: Schema | None, spill_dir: Path | None
) -> tuple[int, Strategy | None]:
    """(last closed round, the run's strategy as checkpointed after it); the strategy is None
    before a worker has fixed the schema. The round and its strategy meta are read in one
    snapshot. Nothing is written: `spill_dir` is only where the strategy will spill later."""
    last = 0
    for _ in range(RESTORE_ATTEMPTS):
        facts = store.get_many("last_closed_round", "strategy_meta")
        last = int(facts.get("last_closed_round") or 0)
        if schema is None:
            return last, None
        strategy = create_strategy(run, schema, spill_dir)
        if last == 0:
            return last, strategy
        tensors = store.load_checkpoint(last)
        if tensors or store.has_checkpoint(last):
            strategy.restore(tensors, facts.get("strategy_meta"))
            return last, strategy
    raise FailedPrecondition(
        f"the checkpoint of round {last} is missing from {store.checkpoints}: the state directory is incomplete"
    )


@dataclass
class StateView:
    """What export needs of a run (`run`, `strategy`, `workers`, `last_closed`, `store`), read-only.

    `workers` maps each worker that ever joined to its example count. Close it (or use it as a
    context manager) to release the read-only SQLite connection.
    """

    store: StateStore
    config: CoordinatorConfig
    run_id: str
    schema: Schema | None
    workers: dict[str, int]
    last_closed: int
    strategy: Strategy | None

    @property
    def run(self) -> RunConfig:
        return self.config.run

    @classmethod
    def open(cls, state_dir: Path) -> StateView:
        """Read the run in `state_dir` as it stands after its last closed round."""
        store = StateStore(state_dir, read_only=True)
        try:
            raw = store.get("config")
            if raw is None:
                raise FailedPrecondition(f"no coordinator has served {state_dir} yet: it holds no run config")
            try:
                config = CoordinatorConfig.model_validate({**raw, "state_dir": str(state_dir)})
            except ValidationError as exc:
                raise ConfigError(f"the run config stored in {state_dir} does not load: {exc}") from None
            schema = store.get_schema()
            last, strategy = restore_strategy(store, config.run, schema, spill_dir=None)
            return cls(store, config, store.get("run_id") or "", schema, store.workers(), last, strategy)
        except sqlite3.DatabaseError as exc:
            store.close()
            raise FailedPrecondition(f"cannot read the state in {state_dir}: {exc}") from None
        except BaseException:
            store.close()
            raise

    def personalised(self, worker_id: str, metrics: Mapping[str, float]) -> PersonalAdapter:
        """The worker's adapter after the last closed round, as the coordinator can reproduce it
        (Strategy.personalised; the view is private to its caller, so no copies are needed)."""
        if self.strategy is None:
            raise FailedPrecondition("no worker has joined this run yet")
        if worker_id not in self.workers:
            raise NotFound(f"unknown worker '{worker_id}'")
        return self.strategy.personalised(worker_id, self.last_closed + 1, metrics)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> StateView:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
