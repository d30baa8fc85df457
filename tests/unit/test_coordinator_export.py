"""The coordinator's export refuses what it cannot reproduce."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_harness import FP, SCHEMA

from common.config import CoordinatorConfig, RunConfig
from common.errors import FailedPrecondition
from common.types import JoinRequest
from coordinator.engine import PushTicket, RoundEngine
from coordinator.export import worker_layers
from coordinator.state import StateStore


def test_personal_expert_runs_export_from_the_worker(tmp_path: Path) -> None:
    run = RunConfig.model_validate({"strategy": "fedtree", "rounds": 3, "fedtree": {"warmup_rounds": 1, "personal": True}})
    engine = RoundEngine(CoordinatorConfig(state_dir=tmp_path, run=run), StateStore(tmp_path))
    engine.resume()
    engine.join(JoinRequest("w0", FP, 10, SCHEMA))
    with pytest.raises(FailedPrecondition, match="personal expert"):
        worker_layers(engine, "w0")


def test_fedalt_export_is_a_clear_failed_precondition_not_an_internal_error(tmp_path: Path) -> None:
    """FedALT's pulls are EXTERNAL only (no CLUSTER): the Admin export used to hit a KeyError."""
    from engine_harness import update

    from common.types import PushHeader
    from coordinator.admin import AdminView

    run = RunConfig.model_validate({"strategy": "fedalt", "rounds": 2, "min_workers": 2})
    engine = RoundEngine(CoordinatorConfig(state_dir=tmp_path, run=run), StateStore(tmp_path))
    engine.resume()
    for worker in ("w0", "w1"):
        engine.join(JoinRequest(worker, FP, 10, SCHEMA))
    for i, worker in enumerate(("w0", "w1")):
        ticket = engine.begin_push(PushHeader(worker, 1, f"u{i}", 10, {}))
        assert isinstance(ticket, PushTicket)
        engine.commit(ticket, update(float(i)), nbytes=1)
    assert engine.last_closed == 1
    with pytest.raises(FailedPrecondition, match="python -m worker export"):
        worker_layers(engine, "w0")
    with pytest.raises(FailedPrecondition, match="python -m worker export"):
        list(AdminView(engine).export("w0"))
