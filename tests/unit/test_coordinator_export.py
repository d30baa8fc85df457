"""The coordinator's export refuses what it cannot reproduce."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_harness import FP, SCHEMA

from common.config import CoordinatorConfig, RunConfig
from common.errors import FailedPrecondition
from common.types import JoinRequest
from coordinator.engine import RoundEngine
from coordinator.export import worker_layers
from coordinator.state import StateStore


def test_personal_expert_runs_export_from_the_worker(tmp_path: Path) -> None:
    run = RunConfig.model_validate({"strategy": "fedtree", "rounds": 3, "fedtree": {"warmup_rounds": 1, "personal": True}})
    engine = RoundEngine(CoordinatorConfig(state_dir=tmp_path, run=run), StateStore(tmp_path))
    engine.resume()
    engine.join(JoinRequest("w0", FP, 10, SCHEMA))
    with pytest.raises(FailedPrecondition, match="personal expert"):
        worker_layers(engine, "w0")
