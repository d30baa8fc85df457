"""RoundEngine: joins, first round, pushes and round closing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from engine_harness import DEADLINE, FP, SCHEMA, T0, A, B, Harness, as_lists, config, update
from safetensors.torch import load_file

from common.chunking import Role
from common.config import CoordinatorConfig, RunConfig
from common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from common.schema import TensorSpec, UploadSpec
from common.types import JoinRequest, PushHeader, PushResult, Task, TaskKind
from coordinator.engine import PushTicket, RoundEngine
from coordinator.state import StateStore

# -- joins and the first round ------------------------------------------------------------------


def test_wait_before_min_workers(h: Harness) -> None:
    run_id, run, current = h.join("A")
    assert current == 0
    assert run == config(h.tmp_path).run
    assert run_id == h.engine.run_id and len(run_id) == 12
    assert h.task("A") == Task(TaskKind.WAIT, 0)
    assert h.engine.current is None
    h.engine.tick()
    assert h.task("A") == Task(TaskKind.WAIT, 0)


def test_train_for_both_after_min_workers(h: Harness) -> None:
    h.join("A")
    _, _, current = h.join("B")
    assert current == 1
    expected = Task(TaskKind.TRAIN, 1, T0 + DEADLINE, UploadSpec((0, 1), lora_a=True, lora_b=True))
    assert h.task("A") == expected
    assert h.task("B") == expected
    assert h.engine.current is not None and h.engine.current.participants == {"A": 10, "B": 10}


def test_late_joiner_waits_for_next_round(started: Harness) -> None:
    started.join("C")
    assert started.task("C") == Task(TaskKind.WAIT, 1)
    assert started.task("A").kind == TaskKind.TRAIN


def test_get_task_wait_zero_returns_immediately(h: Harness) -> None:
    h.join("A")
    t = time.monotonic()
    assert h.engine.get_task("A", 0).kind == TaskKind.WAIT
    assert h.engine.get_task("A", -5).kind == TaskKind.WAIT
    assert time.monotonic() - t < 0.5


def test_get_task_unknown_worker(h: Harness) -> None:
    with pytest.raises(NotFound, match="unknown worker 'ghost'"):
        h.engine.get_task("ghost", 0)
    with pytest.raises(NotFound):
        h.engine.heartbeat("ghost", "training")


def test_join_fixes_fingerprint_and_schema(h: Harness) -> None:
    assert h.engine.fingerprint is None and h.engine.schema is None
    h.join("A")
    assert h.engine.fingerprint == FP
    assert h.engine.schema == SCHEMA
    assert h.store.get("fingerprint") == FP
    assert h.store.get_schema() == SCHEMA
    assert h.store.workers() == {"A": 10}


def test_join_with_different_fingerprint(h: Harness) -> None:
    h.join("A")
    with pytest.raises(FailedPrecondition, match="model fingerprint other-fp of worker B differs"):
        h.join("B", fingerprint="other-fp")
    assert h.engine.fingerprint == FP
    assert h.store.get("fingerprint") == FP
    assert "B" not in h.engine.workers
    assert h.store.workers() == {"A": 10}
    assert h.engine.current is None  # B did not count towards min_workers


def test_join_with_expected_fingerprint_from_config(tmp_path: Path) -> None:
    cfg = CoordinatorConfig(state_dir=tmp_path, expected_fingerprint="pinned", run=RunConfig(min_workers=1))
    store = StateStore(tmp_path)
    try:
        engine = RoundEngine(cfg, store, clock=lambda: T0)
        engine.resume()
        with pytest.raises(FailedPrecondition):
            engine.join(JoinRequest("A", FP, 1, SCHEMA))
        assert engine.schema is None
        engine.join(JoinRequest("A", "pinned", 1, SCHEMA))
        assert engine.schema == SCHEMA
    finally:
        store.close()


@pytest.mark.parametrize(
    "schema",
    [
        {0: SCHEMA[0]},  # a layer missing
        {**SCHEMA, 1: {A: TensorSpec(A, (2, 4), "float32"), B: TensorSpec(B, (4, 3), "float32")}},  # shape
        {**SCHEMA, 0: {A: TensorSpec(A, (2, 4), "bfloat16"), B: TensorSpec(B, (4, 2), "float32")}},  # dtype
        {**SCHEMA, 0: {A: TensorSpec(A, (2, 4), "float32")}},  # a tensor missing
    ],
)
def test_join_with_different_schema(h: Harness, schema: dict) -> None:
    h.join("A")
    with pytest.raises(FailedPrecondition, match="adapter schema of worker B differs"):
        h.join("B", schema=schema)
    assert h.engine.schema == SCHEMA
    assert h.store.get_schema() == SCHEMA
    assert "B" not in h.engine.workers


def test_join_rejects_empty_worker_id_and_schema(h: Harness) -> None:
    with pytest.raises(InvalidArgument, match="worker_id must not be empty"):
        h.join("")
    with pytest.raises(InvalidArgument, match="no adapter schema"):
        h.join("A", schema={})
    assert h.engine.fingerprint is None


# -- pushes and round closing -------------------------------------------------------------------


def test_begin_push_fixes_what_the_push_carries(started: Harness) -> None:
    ticket = started.ticket("A", 1, "u", 10)
    assert (ticket.worker_id, ticket.round, ticket.upload_id) == ("A", 1, "u")
    assert ticket.spec == UploadSpec((0, 1)) and ticket.expected == SCHEMA
    assert started.store.pushes(1) == {} and started.engine.current is not None and started.engine.current.pushed == {}


def _nothing(h: Harness) -> None:
    pass


# case -> (what happens first, the header begin_push is given, the error, its words)
BEGIN_REJECTS: dict[str, tuple[Callable[[Harness], object], PushHeader, type[Exception], str]] = {
    "zero examples": (_nothing, PushHeader("A", 1, "u", 0), InvalidArgument, "num_examples must be positive"),
    "unknown worker": (_nothing, PushHeader("ghost", 1, "u", 10), NotFound, "unknown worker 'ghost'"),
    "future round": (
        _nothing,
        PushHeader("A", 2, "u", 10),
        FailedPrecondition,
        r"round 2 is not open \(current: 1, last closed: 0\)",
    ),
    "past round": (_nothing, PushHeader("A", 0, "u", 10), FailedPrecondition, "round 0 is not open"),
    "non participant": (
        lambda h: h.join("C"),
        PushHeader("C", 1, "u", 10),
        FailedPrecondition,
        "C is not a participant of round 1",
    ),
    "evicted": (lambda h: h.engine.evict("A"), PushHeader("A", 1, "u", 10), PermissionDenied, "worker A was evicted"),
    "pushed before": (
        lambda h: h.push("A", 1, 1.0, 1, upload_id="first"),
        PushHeader("A", 1, "second", 10),
        FailedPrecondition,
        r"worker A already pushed round 1 \(upload first\)",
    ),
}


@pytest.mark.parametrize("case", sorted(BEGIN_REJECTS))
def test_begin_push_rejects_before_any_byte_is_read(started: Harness, case: str) -> None:
    before, header, error, words = BEGIN_REJECTS[case]
    before(started)
    pushes = started.store.pushes(1)
    with pytest.raises(error, match=words):
        started.engine.begin_push(header)
    assert started.store.pushes(1) == pushes


def test_begin_push_acks_an_accepted_upload_id_as_a_duplicate(started: Harness) -> None:
    h = started
    h.push("A", 1, 1.0, 1, upload_id="up-A")
    assert h.engine.begin_push(PushHeader("A", 1, "up-A", 1)) == PushResult(True, 1, 0, duplicate=True)
    h.push("B", 1, 5.0, 3)
    assert h.engine.last_closed == 1  # after the round closed, the state store remembers the upload id
    assert h.engine.begin_push(PushHeader("A", 1, "up-A", 1)) == PushResult(True, 1, 0, duplicate=True)
    with pytest.raises(FailedPrecondition, match="round 1 is not open"):
        h.engine.begin_push(PushHeader("A", 1, "other", 1))


# -- what commit re-checks: what changed while the bytes arrived ------------------------------------


def test_commit_after_the_worker_was_evicted_is_refused(started: Harness) -> None:
    h = started
    ticket = h.ticket("A", 1, "a1")
    h.engine.evict("A")
    with pytest.raises(PermissionDenied, match="worker A was evicted"):
        h.engine.commit(ticket, update(1.0), nbytes=100)
    assert h.store.pushes(1) == {} and h.engine.workers["A"].rounds_done == 0


def test_commit_after_the_round_closed_is_refused(started: Harness) -> None:
    h = started
    ticket = h.ticket("A", 1, "a1")
    h.clock.advance(DEADLINE + 1)
    h.engine.tick()  # round 1 closes on its deadline with no push, round 2 opens
    assert h.engine.last_closed == 1
    with pytest.raises(FailedPrecondition, match=r"round 1 closed while the push of worker A was being received \(current: 2"):
        h.engine.commit(ticket, update(1.0), nbytes=100)
    assert h.store.pushes(1) == {} and h.store.pushes(2) == {} and h.global_adapter() == {}


def test_commit_after_the_last_round_closed_into_the_evaluation_pass_is_refused(started: Harness) -> None:
    h = started
    h.push("A", 1, 1.0, 1)
    h.push("B", 1, 5.0, 3)
    ticket = h.ticket("A", 2, "a2")
    h.clock.advance(DEADLINE + 1)
    h.engine.tick()  # round 2 (the last) closes: the evaluation pass is open, still numbered 2
    assert h.engine.current is not None and h.engine.current.evaluating and h.engine.current.round == 2
    with pytest.raises(FailedPrecondition, match="round 2 closed while the push of worker A"):
        h.engine.commit(ticket, update(1.0), nbytes=100)
    assert h.store.pushes(2) == {}


def test_concurrent_retry_with_the_same_upload_id_is_a_duplicate(started: Harness) -> None:
    h = started
    first, retry = h.ticket("A", 1, "same"), h.ticket("A", 1, "same")  # both admitted before either commits
    assert h.engine.commit(first, update(1.0), nbytes=100) == PushResult(True, 1, 2)
    assert h.engine.commit(retry, update(1.0), nbytes=100) == PushResult(True, 1, 0, duplicate=True)
    assert list(h.store.pushes(1)) == ["A"] and h.engine.workers["A"].rounds_done == 1
    assert h.engine.begin_push(PushHeader("A", 1, "same", 1)) == PushResult(True, 1, 0, duplicate=True)
    h.push("B", 1, 5.0, 3)  # round 1 closes
    assert h.global_adapter() == as_lists(update(4.0))  # A counted once: (1 * 1 + 3 * 5) / 4 = 4


def test_concurrent_push_with_another_upload_id_is_refused(started: Harness) -> None:
    h = started
    one, two = h.ticket("A", 1, "one"), h.ticket("A", 1, "two")
    h.engine.commit(one, update(1.0), nbytes=100)
    with pytest.raises(FailedPrecondition, match=r"worker A already pushed round 1 \(upload one\)"):
        h.engine.commit(two, update(9.0), nbytes=100)
    assert h.store.pushes(1)["A"]["upload_id"] == "one"


def test_retry_committed_after_its_round_closed_is_a_duplicate(started: Harness) -> None:
    h = started
    first, retry = h.ticket("A", 1, "same"), h.ticket("A", 1, "same")
    h.engine.commit(first, update(1.0), nbytes=100)
    h.push("B", 1, 5.0, 3)
    assert h.engine.last_closed == 1
    assert h.engine.commit(retry, update(1.0), nbytes=100) == PushResult(True, 1, 0, duplicate=True)


def test_commits_racing_on_threads_count_one_push(started: Harness) -> None:
    h = started
    tickets = [h.ticket("A", 1, "same") for _ in range(4)]
    barrier = threading.Barrier(len(tickets))
    results: list[PushResult] = []

    def commit(ticket: PushTicket) -> None:
        barrier.wait()
        results.append(h.engine.commit(ticket, update(1.0), nbytes=100))

    threads = [threading.Thread(target=commit, args=(t,)) for t in tickets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(r.duplicate for r in results) == [False, True, True, True]
    assert list(h.store.pushes(1)) == ["A"] and h.engine.workers["A"].rounds_done == 1


def test_commit_a_then_b_closes_round_and_opens_next(started: Harness) -> None:
    h = started
    assert h.push("A", 1, 1.0, 1) == PushResult(True, 1, 2)
    assert h.engine.last_closed == 0
    assert h.task("A") == Task(TaskKind.WAIT, 1)  # A pushed; B has not yet
    assert h.task("B").kind == TaskKind.TRAIN

    assert h.push("B", 1, 5.0, 3) == PushResult(True, 1, 2)

    assert h.engine.last_closed == 1
    assert h.store.last_closed_round() == 1
    checkpoint = h.tmp_path / "checkpoints" / "round-00001.safetensors"
    assert checkpoint.is_file()
    assert h.engine.current is not None and h.engine.current.round == 2
    expected_task = Task(TaskKind.TRAIN, 2, T0 + DEADLINE, UploadSpec((0, 1)))
    assert h.task("A") == expected_task
    assert h.task("B") == expected_task

    # (1 * update(1) + 3 * update(5)) / 4 == update(4)
    assert h.global_adapter() == as_lists(update(4.0))
    saved = load_file(str(checkpoint))
    assert sorted(saved) == [f"global/{layer}/{name}" for layer in (0, 1) for name in (A, B)]
    assert saved[f"global/1/{B}"].tolist() == [[3.0, 3.0]] * 4

    _, downloads = h.engine.downloads("A", 2)
    assert [(d.layer, d.role, d.share_key) for d in downloads] == [(0, Role.CLUSTER, "global"), (1, Role.CLUSTER, "global")]
    assert {d.layer: {n: t.tolist() for n, t in d.tensors.items()} for d in downloads} == as_lists(update(4.0))

    rounds = h.store.rounds()
    assert [(r["round"], r["participants"], r["pushes"], r["bytes"]) for r in rounds] == [(1, ["A", "B"], 2, 200)]
    assert h.store.pushes(1)["B"]["num_examples"] == 3
    assert h.engine.workers["A"].rounds_done == 1


def test_downloads_for_closed_round_rejected(started: Harness) -> None:
    h = started
    assert h.engine.downloads("A", 1) == (0, [])  # round 1: no global adapter yet
    h.push("A", 1, 1.0, 1)
    h.push("B", 1, 5.0, 3)
    with pytest.raises(FailedPrecondition, match="round 1 is not open"):
        h.engine.downloads("A", 1)


def test_duplicate_commit_is_idempotent(started: Harness) -> None:
    h = started
    assert h.push("A", 1, 1.0, 1, upload_id="up-A") == PushResult(True, 1, 2)
    assert h.push("A", 1, 1.0, 1, upload_id="up-A") == PushResult(True, 1, 0, duplicate=True)
    assert h.engine.last_closed == 0  # a duplicate is not a second push
    assert list(h.store.pushes(1)) == ["A"]
    assert h.engine.workers["A"].rounds_done == 1

    h.push("B", 1, 5.0, 3, upload_id="up-B")
    # not double counted: a second A would give (2*update(1) + 3*update(5)) / 5 = update(3.4)
    assert h.global_adapter() == as_lists(update(4.0))


def test_second_push_with_other_upload_id(started: Harness) -> None:
    h = started
    h.push("A", 1, 1.0, 1, upload_id="first")
    with pytest.raises(FailedPrecondition, match=r"worker A already pushed round 1 \(upload first\)"):
        h.push("A", 1, 9.0, 1, upload_id="second")
    h.push("B", 1, 5.0, 3)
    assert h.global_adapter() == as_lists(update(4.0))


def test_push_for_future_round(started: Harness) -> None:
    h = started
    with pytest.raises(FailedPrecondition, match=r"round 2 is not open \(current: 1, last closed: 0\)"):
        h.push("A", 2, 1.0, 1)
    with pytest.raises(FailedPrecondition, match="round 2 is not open"):
        h.engine.begin_push(PushHeader("A", 2, "u", 1))
    assert h.store.pushes(2) == {}
    assert h.engine.current is not None and h.engine.current.pushed == {}


def test_push_before_any_round(h: Harness) -> None:
    h.join("A")
    with pytest.raises(FailedPrecondition, match=r"round 1 is not open \(current: none"):
        h.push("A", 1, 1.0, 1)


def test_commit_unknown_worker(started: Harness) -> None:
    with pytest.raises(NotFound):
        started.push("ghost", 1, 1.0, 1)


def test_rebuild_needs_a_round_left(tmp_path: Path) -> None:
    """RebuildTree during the last round or after the run: FAILED_PRECONDITION, not a round past the end."""
    from common.config import CoordinatorConfig, RunConfig
    from common.errors import FailedPrecondition
    from common.types import JoinRequest, PushHeader
    from coordinator.engine import PushTicket, RoundEngine
    from coordinator.state import StateStore

    run = RunConfig.model_validate({"strategy": "fedtree", "rounds": 2, "min_workers": 2, "fedtree": {"warmup_rounds": 1}})
    engine = RoundEngine(CoordinatorConfig(state_dir=tmp_path, run=run), StateStore(tmp_path))
    engine.resume()
    for worker in ("a", "b"):
        engine.join(JoinRequest(worker, FP, 10, SCHEMA))
    assert engine.request_rebuild() == 2  # during round 1: the tree can be rebuilt in round 2

    def push_all(round: int) -> None:
        for i, worker in enumerate(("a", "b")):
            ticket = engine.begin_push(PushHeader(worker, round, f"{worker}{round}", 10, {}))
            assert isinstance(ticket, PushTicket)
            engine.commit(ticket, update(float(i)), nbytes=1)

    push_all(1)
    with pytest.raises(FailedPrecondition, match="round 2 is its last"):
        engine.request_rebuild()  # during the last round
    push_all(2)
    for worker in ("a", "b"):
        engine.report_metrics(worker, 2, {"accuracy": 1.0})
    assert engine.done
    with pytest.raises(FailedPrecondition, match="is finished"):
        engine.request_rebuild()
