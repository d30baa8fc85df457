"""RoundEngine: deadlines, the evaluation pass, DONE and restarts."""

from __future__ import annotations

import pytest
from engine_harness import DEADLINE, FP, SCHEMA, T0, Harness, as_lists, update

from common.errors import FailedPrecondition, NotFound
from common.schema import UploadSpec
from common.types import PushHeader, PushResult, Task, TaskKind

# -- deadlines ----------------------------------------------------------------------------------


def test_deadline_closes_round_with_one_push(started: Harness) -> None:
    h = started
    h.push("A", 1, 2.0, 5)
    h.clock.advance(DEADLINE - 1)
    h.engine.tick()
    assert h.engine.last_closed == 0

    h.clock.advance(2)  # past the deadline
    h.engine.tick()

    assert h.engine.last_closed == 1
    assert h.store.rounds()[0]["pushes"] == 1
    assert h.global_adapter() == as_lists(update(2.0))  # only A's update
    cur = h.engine.current
    assert cur is not None and cur.round == 2
    assert set(cur.participants) == {"A", "B"}  # B is late, not lost
    assert cur.deadline == T0 + DEADLINE + 1 + DEADLINE
    assert h.task("B").kind == TaskKind.TRAIN


def test_deadline_with_no_pushes_keeps_empty_global(started: Harness) -> None:
    h = started
    h.clock.advance(DEADLINE)
    h.engine.tick()
    assert h.engine.last_closed == 1
    assert h.global_adapter() == {}
    assert h.engine.downloads("A", 2) == (1, [])


def test_late_push_after_deadline_rejected(started: Harness) -> None:
    h = started
    h.clock.advance(DEADLINE + 1)
    h.engine.tick()
    with pytest.raises(FailedPrecondition, match="round 1 is not open"):
        h.push("A", 1, 1.0, 1)


# -- evaluation pass and DONE -------------------------------------------------------------------


def finish_rounds(h: Harness) -> None:
    for rnd in (1, 2):
        h.push("A", rnd, 1.0, 1)
        h.push("B", rnd, 5.0, 3)
    assert h.engine.last_closed == 2


def test_evaluate_then_done(started: Harness) -> None:
    h = started
    finish_rounds(h)
    assert h.task("A") == Task(TaskKind.EVALUATE, 2, T0 + DEADLINE)
    assert h.task("B") == Task(TaskKind.EVALUATE, 2, T0 + DEADLINE)
    with pytest.raises(FailedPrecondition, match="evaluation pass"):
        h.engine.begin_push(PushHeader("A", 2, "u", 1))
    assert len(h.engine.downloads("A", 2)) == 2  # the final global adapter

    h.engine.report_metrics("A", 2, {"accuracy": 0.75})
    assert h.task("A") == Task(TaskKind.WAIT, 2)
    assert h.task("B").kind == TaskKind.EVALUATE
    assert not h.engine.done

    h.engine.report_metrics("B", 2, {"accuracy": 0.5})
    assert h.engine.done
    assert h.engine.wait_done(0)
    assert h.task("A") == Task(TaskKind.DONE)
    assert h.task("B") == Task(TaskKind.DONE)
    assert h.store.get("evaluated") is True
    assert h.store.evaluations() == {2: {"A": {"accuracy": 0.75}, "B": {"accuracy": 0.5}}}
    assert h.engine.last_closed == 2
    assert not (h.tmp_path / "checkpoints" / "round-00003.safetensors").exists()


def test_report_metrics_for_round_without_aggregate(started: Harness) -> None:
    h = started
    with pytest.raises(FailedPrecondition, match=r"round 1 has no aggregate to evaluate \(last closed: 0\)"):
        h.engine.report_metrics("A", 1, {"accuracy": 0.1})
    with pytest.raises(FailedPrecondition, match="round 0 has no aggregate"):
        h.engine.report_metrics("A", 0, {"accuracy": 0.1})
    h.push("A", 1, 1.0, 1)
    h.push("B", 1, 5.0, 3)
    h.engine.report_metrics("A", 1, {"accuracy": 0.25})  # round 1 is closed now
    with pytest.raises(FailedPrecondition, match="round 2 has no aggregate"):
        h.engine.report_metrics("A", 2, {"accuracy": 0.1})
    assert h.store.evaluations() == {1: {"A": {"accuracy": 0.25}}}
    assert h.engine.current is not None and h.engine.current.pushed == {}  # not an evaluation pass


def test_report_metrics_unknown_worker(started: Harness) -> None:
    with pytest.raises(NotFound):
        started.engine.report_metrics("ghost", 1, {})


def test_wait_done_times_out(started: Harness) -> None:
    assert started.engine.wait_done(0) is False


# -- restart ------------------------------------------------------------------------------------


def test_restart_after_round_one(started: Harness) -> None:
    h = started
    h.push("A", 1, 1.0, 1)
    h.push("B", 1, 5.0, 3)
    before = h.global_adapter()
    run_id = h.engine.run_id
    assert before == as_lists(update(4.0))

    engine = h.restart()

    assert engine.last_closed == 1
    assert engine.run_id == run_id
    assert engine.fingerprint == FP
    assert engine.schema == SCHEMA
    assert h.global_adapter() == before
    assert engine.current is None  # nobody is live until they re-join
    assert {w: i.activity for w, i in engine.workers.items()} == {"A": "lost", "B": "lost"}
    assert not engine.done

    with pytest.raises(FailedPrecondition):
        h.join("C", fingerprint="other-fp")
    h.join("A", n=10)
    assert h.task("A") == Task(TaskKind.WAIT, 1)  # min_workers=2: B is still lost
    h.join("B", n=30)
    expected = Task(TaskKind.TRAIN, 2, T0 + DEADLINE, UploadSpec((0, 1)))
    assert h.task("A") == expected
    assert h.task("B") == expected

    h.push("A", 2, 3.0, 1)
    h.push("B", 2, 7.0, 1)
    assert engine.last_closed == 2
    assert h.global_adapter() == as_lists(update(5.0))


def test_restart_keeps_the_admin_counters_as_of_the_last_closed_round(started: Harness) -> None:
    """rounds done, bytes, address and metrics survive a restart (they used to restart from zero
    and an empty address); pushes of the unclosed round are not counted, they are re-requested."""
    h = started
    h.engine.workers["A"].address = "ipv4:10.0.0.5:4242"
    h.engine.add_bytes_sent("A", 500)
    h.push("A", 1, 1.0, 1)
    h.push("B", 1, 5.0, 3)
    h.push("A", 2, 1.0, 1)  # round 2 stays open
    engine = h.restart()
    a, b = engine.workers["A"], engine.workers["B"]
    assert (a.rounds_done, a.bytes_received, a.bytes_sent, a.address) == (1, 100, 500, "ipv4:10.0.0.5:4242")
    assert (b.rounds_done, b.bytes_received) == (1, 100)
    assert a.last_metrics == {"loss": 1.0} and a.activity == "lost"


def test_restart_discards_unclosed_pushes_of_next_round(started: Harness) -> None:
    h = started
    h.push("A", 1, 1.0, 1)
    h.push("B", 1, 5.0, 3)
    h.push("A", 2, 9.0, 1)  # round 2 never closes before the crash
    h.restart()
    assert h.store.pushes(2) == {}
    h.join("A")
    h.join("B")
    h.push("A", 2, 1.0, 1)  # may push round 2 again
    h.push("B", 2, 3.0, 1)
    assert h.global_adapter() == as_lists(update(2.0))


def test_restart_after_done(started: Harness) -> None:
    h = started
    finish_rounds(h)
    h.engine.report_metrics("A", 2, {})
    h.engine.report_metrics("B", 2, {})
    engine = h.restart()
    assert engine.done
    h.join("A")
    assert h.task("A") == Task(TaskKind.DONE)


def test_restart_during_round_one_allows_re_push(started: Harness) -> None:
    h = started
    h.push("A", 1, 1.0, 1, upload_id="before-crash")
    h.restart()
    h.join("A")
    h.join("B")
    assert h.task("A").kind == TaskKind.TRAIN
    assert h.push("A", 1, 1.0, 1, upload_id="after-crash") == PushResult(True, 1, 2)
    h.push("B", 1, 5.0, 3)
    assert h.global_adapter() == as_lists(update(4.0))


def test_waiting_for_workers_is_logged_once_per_change(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """An operator whose coordinator waits for min_workers sees why in its log (it used to say nothing)."""
    import logging

    h = Harness(tmp_path)  # min_workers = 2
    with caplog.at_level(logging.INFO, logger="coordinator.engine"):
        h.join("A")
        h.task("A")
        h.task("A")
    waiting = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert waiting == ["[Engine] waiting for 1 more worker(s) before round 1 opens: 1/2 joined and live (run.min_workers)"]
