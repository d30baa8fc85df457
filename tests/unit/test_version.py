"""JoinRequest.version: the coordinator refuses a worker of another protocol MAJOR, and a worker
too old for the run's blob digest."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_harness import FP, SCHEMA, Harness

from common.config import CoordinatorConfig, RunConfig
from common.errors import FailedPrecondition
from common.types import JoinRequest
from common.version import PROTOCOL_VERSION, check_compatible, check_digest, major, minor
from coordinator.engine import RoundEngine
from coordinator.state import StateStore


def test_same_major_joins_other_major_or_none_is_refused() -> None:
    assert major(PROTOCOL_VERSION) == 1 and major("12.3") == 12 and major("") is None and major("v1") is None
    check_compatible("w", PROTOCOL_VERSION)
    check_compatible("w", "1.9")  # a MINOR step only adds
    with pytest.raises(
        FailedPrecondition, match=r"worker w speaks protocol 2\.0, this coordinator 1\.1: .*upgrade the coordinator"
    ):
        check_compatible("w", "2.0")
    with pytest.raises(FailedPrecondition, match="upgrade the worker"):
        check_compatible("w", "0.1.0")
    with pytest.raises(FailedPrecondition, match="sent no usable protocol version"):
        check_compatible("w", "")


def test_engine_refuses_the_join_and_records_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with pytest.raises(FailedPrecondition, match="major versions differ"):
        h.engine.join(JoinRequest("A", FP, 10, SCHEMA, version="2.0"))
    assert h.engine.workers == {} and h.store.workers() == {} and h.engine.schema is None
    h.engine.join(JoinRequest("A", FP, 10, SCHEMA))  # the default is this build's version
    assert set(h.engine.workers) == {"A"}


def test_digest_gate_lets_only_1_1_workers_into_a_blake3_run() -> None:
    assert (minor("1.1"), minor("1"), minor("1.x"), minor("1.12.3")) == (1, 0, None, 12)
    for version in (PROTOCOL_VERSION, "1.1", "1.7"):
        check_digest("w", version, "blake3")
    for version in ("1.0", "1", "1.x"):
        check_digest("w", version, "sha256")  # the chunk layout is unchanged: a 1.0 worker joins a sha256 run
        with pytest.raises(FailedPrecondition, match=rf"worker w speaks protocol {version}, which checks blobs with sha256 only"):
            check_digest("w", version, "blake3")


def test_engine_refuses_a_1_0_worker_at_join_unless_the_run_uses_sha256(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with pytest.raises(FailedPrecondition, match=r"this run uses blake3 \(run.digest\): upgrade the worker"):
        h.engine.join(JoinRequest("A", FP, 10, SCHEMA, version="1.0"))
    assert h.engine.workers == {} and h.engine.schema is None
    cfg = CoordinatorConfig(state_dir=tmp_path / "sha", run=RunConfig(digest="sha256"))
    engine = RoundEngine(cfg, StateStore(tmp_path / "sha"))
    engine.resume()
    engine.join(JoinRequest("A", FP, 10, SCHEMA, version="1.0"))
    assert set(engine.workers) == {"A"}
