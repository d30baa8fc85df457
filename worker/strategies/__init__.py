"""The worker halves of the strategies, registered under their coordinator halves' names."""

from __future__ import annotations

from common.config import RunConfig
from common.errors import ConfigError
from worker.strategies.base import Personalised, WorkerStrategy
from worker.strategies.fedalt import FedALTWorker
from worker.strategies.fedtree import FedTreeWorker
from worker.strategies.ffa import FFAWorker

# One line per strategy; plain LoRA workers share the base class. The keys are those of
# coordinator.strategies.STRATEGIES (a test holds the two registries equal).
WORKER_STRATEGIES: dict[str, type[WorkerStrategy]] = {
    "local": WorkerStrategy,
    "fedit": WorkerStrategy,
    "ffa": FFAWorker,
    "fedsa": WorkerStrategy,
    "fedper": WorkerStrategy,
    "fedalt": FedALTWorker,
    "flat": WorkerStrategy,
    "indep": WorkerStrategy,
    "fedtree": FedTreeWorker,
}


def create_worker_strategy(run: RunConfig) -> WorkerStrategy:
    """The worker half of the run's strategy (call `prepare(lm)` once the model is built)."""
    try:
        cls = WORKER_STRATEGIES[run.strategy]
    except KeyError:
        raise ConfigError(
            f"this worker has no strategy '{run.strategy}' (it knows {sorted(WORKER_STRATEGIES)}): update the worker"
        ) from None
    return cls(run)


__all__ = ["WORKER_STRATEGIES", "Personalised", "WorkerStrategy", "create_worker_strategy"]
