"""Aggregation strategies: one module each, registered by name here."""

from __future__ import annotations

from pathlib import Path

from common.config import RunConfig
from common.errors import ConfigError
from common.schema import Schema
from coordinator.strategies.base import Download, Strategy
from coordinator.strategies.fedalt import FedALT
from coordinator.strategies.fedit import FedIT
from coordinator.strategies.fedper import FedPer
from coordinator.strategies.fedsa import FedSA
from coordinator.strategies.fedtree import FedTree
from coordinator.strategies.ffa import FFA
from coordinator.strategies.flat import Flat
from coordinator.strategies.indep import Indep
from coordinator.strategies.local import Local

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Local, FedIT, FFA, FedSA, FedPer, FedALT, Flat, Indep, FedTree)
}


def create_strategy(run: RunConfig, schema: Schema, spill_dir: Path | None = None) -> Strategy:
    """The run's strategy; `spill_dir` is where uploads it must keep whole go (None: memory)."""
    try:
        cls = STRATEGIES[run.strategy]
    except KeyError:
        raise ConfigError(f"unknown strategy '{run.strategy}'; choose one of {sorted(STRATEGIES)}") from None
    return cls(run, schema, spill_dir)


__all__ = ["STRATEGIES", "Download", "Strategy", "create_strategy"]
