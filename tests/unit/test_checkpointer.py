"""Background checkpoints (what the server runs): the push that closes a round is acknowledged
before the round's checkpoint is on disk, and the next round opens only once it is."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_harness import FP, SCHEMA, Clock, Harness, config

from common.types import JoinRequest, PushResult, TaskKind
from coordinator import checkpointer
from coordinator.engine import RoundEngine
from coordinator.state import StateStore


class GatedStore(StateStore):
    """close_round waits for `gate`, after failing `failures` times."""

    def __init__(self, root: Path, failures: int = 0) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.failures = failures
        self.calls = 0

    def close_round(self, *args: Any, **kwargs: Any) -> Path:
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(10)
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        return super().close_round(*args, **kwargs)


class BackgroundHarness(Harness):
    def __init__(self, tmp_path: Path, failures: int = 0) -> None:  # the same harness around another engine
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.store = GatedStore(tmp_path, failures)
        self.engine = RoundEngine(config(tmp_path), self.store, clock=lambda: self.clock.now, background_checkpoints=True)
        self.engine.resume()


def close_round_1(h: BackgroundHarness) -> PushResult:
    for w in ("A", "B"):
        h.engine.join(JoinRequest(w, FP, 10, SCHEMA))
    assert h.task("A").kind == TaskKind.TRAIN
    h.push("A", 1, 1.0, 1)
    return h.push("B", 1, 3.0, 1)  # closes round 1


def test_closing_push_is_acknowledged_before_the_checkpoint_and_the_next_round_waits_for_it(tmp_path: Path) -> None:
    h = BackgroundHarness(tmp_path)
    ack = close_round_1(h)  # returns although close_round is still blocked on the gate
    assert ack.accepted and h.engine.last_closed == 1 and h.engine.current is None
    assert h.store.entered.wait(10) and h.engine.checkpointer.pending == 1
    assert h.store.last_closed_round() == 0  # not on disk yet ...
    h.engine.tick()
    assert h.task("A").kind == TaskKind.WAIT and h.engine.current is None  # ... so round 2 does not open
    again = h.push("B", 1, 3.0, 1)  # the closing push retried (its ack was lost): a duplicate, nothing counted
    assert again.duplicate
    h.store.gate.set()
    assert h.engine.checkpointer.wait(10)
    assert h.store.last_closed_round() == 1 and h.store.has_checkpoint(1)
    assert h.engine.current is not None and h.engine.current.round == 2  # opened by the checkpoint's completion
    assert h.task("A").kind == TaskKind.TRAIN
    torch.testing.assert_close(h.engine.store.load_checkpoint(1)["global/0/q.lora_B.weight"], torch.full((4, 2), 2.0))


def test_a_failed_checkpoint_is_retried_and_no_round_opens_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpointer, "RETRY_FIRST_S", 0.01)
    h = BackgroundHarness(tmp_path, failures=2)
    close_round_1(h)
    assert h.engine.checkpointer.pending == 1
    h.engine.tick()
    assert h.engine.current is None
    h.store.gate.set()
    assert h.engine.checkpointer.wait(10)
    assert h.store.calls == 3 and h.store.last_closed_round() == 1 and h.engine.current is not None


def test_stop_gives_up_retrying_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpointer, "RETRY_FIRST_S", 0.01)
    h = BackgroundHarness(tmp_path, failures=10**6)
    close_round_1(h)
    h.store.gate.set()
    assert not h.engine.checkpointer.stop(timeout=10)  # round 1 is not on disk
    assert h.engine.checkpointer.pending == 1 and h.store.last_closed_round() == 0


def test_inline_mode_writes_before_the_closing_push_returns(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for w in ("A", "B"):
        h.join(w)
    h.task("A")
    h.push("A", 1, 1.0, 1)
    h.push("B", 1, 3.0, 1)
    assert h.store.last_closed_round() == 1 and h.engine.checkpointer.pending is None
