"""Fixtures of the unit tests: a RoundEngine harness (see engine_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_harness import Harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.store.close()


@pytest.fixture
def started(h: Harness) -> Harness:
    """Both workers joined; round 1 is open."""
    h.join("A", n=10)
    h.join("B", n=30)
    return h
