"""JoinRequest.version: the coordinator refuses a worker of another protocol MAJOR."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_harness import FP, SCHEMA, Harness

from common.errors import FailedPrecondition
from common.types import JoinRequest
from common.version import PROTOCOL_VERSION, check_compatible, major


def test_same_major_joins_other_major_or_none_is_refused() -> None:
    assert major(PROTOCOL_VERSION) == 1 and major("12.3") == 12 and major("") is None and major("v1") is None
    check_compatible("w", PROTOCOL_VERSION)
    check_compatible("w", "1.9")  # a MINOR step only adds
    with pytest.raises(
        FailedPrecondition, match=r"worker w speaks protocol 2\.0, this coordinator 1\.0: .*upgrade the coordinator"
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
