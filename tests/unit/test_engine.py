"""Unit tests for coordinator.engine.RoundEngine with a real StateStore and a fake clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.chunking import Role
from common.config import CoordinatorConfig, RunConfig
from common.errors import FailedPrecondition, InvalidArgument, NotFound
from common.schema import TensorSpec, UploadSpec
from common.types import JoinRequest, PushHeader, PushResult, Task, TaskKind
from coordinator.engine import RoundEngine
from coordinator.state import StateStore
from coordinator.strategies.fedit import FedIT

A = "q.lora_A.weight"
B = "q.lora_B.weight"
T0 = 1000.0
DEADLINE = 100.0
SCHEMA = {layer: {A: TensorSpec(A, (2, 4), "float32"), B: TensorSpec(B, (4, 2), "float32")} for layer in (0, 1)}
FP = "fingerprint-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(tmp_path: Path) -> CoordinatorConfig:
    return CoordinatorConfig(state_dir=tmp_path, run=RunConfig(rounds=2, min_workers=2, round_deadline_s=DEADLINE))


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.store = StateStore(tmp_path)
        self.engine = RoundEngine(config(tmp_path), self.store, clock=lambda: self.clock.now)

    def restart(self) -> RoundEngine:
        self.store.close()
        self.store = StateStore(self.tmp_path)
        self.engine = RoundEngine(config(self.tmp_path), self.store, clock=lambda: self.clock.now)
        return self.engine

    def join(self, worker: str, fingerprint: str = FP, schema: dict = SCHEMA, n: int = 10) -> tuple[str, RunConfig, int]:
        return self.engine.join(JoinRequest(worker, fingerprint, n, schema))

    def task(self, worker: str) -> Task:
        return self.engine.get_task(worker, 0)

    def push(self, worker: str, round: int, value: float, num_examples: int, upload_id: str | None = None) -> PushResult:
        header = PushHeader(worker, round, upload_id or f"{worker}-{round}", num_examples, {"loss": value})
        return self.engine.commit_push(header, update(value), nbytes=100)

    def global_adapter(self) -> dict[int, dict[str, list]]:
        strategy = self.engine.strategy
        assert isinstance(strategy, FedIT)
        return {layer: {n: t.tolist() for n, t in ts.items()} for layer, ts in strategy.global_adapter.items()}


def update(value: float) -> dict[int, dict[str, torch.Tensor]]:
    """Layer l: A = arange(8) reshaped (2,4) + 10*l + value, B = full(value - l)."""
    return {
        layer: {
            A: torch.arange(8, dtype=torch.float32).reshape(2, 4) + 10 * layer + value,
            B: torch.full((4, 2), value - layer, dtype=torch.float32),
        }
        for layer in (0, 1)
    }


def as_lists(layers: dict[int, dict[str, torch.Tensor]]) -> dict[int, dict[str, list]]:
    return {layer: {n: t.tolist() for n, t in ts.items()} for layer, ts in layers.items()}


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


def test_expected_upload(started: Harness) -> None:
    header = PushHeader("A", 1, "u", 10)
    assert started.engine.expected_upload(header) == SCHEMA
    with pytest.raises(InvalidArgument, match="num_examples must be positive"):
        started.engine.expected_upload(PushHeader("A", 1, "u", 0))


def test_expected_upload_unknown_worker(started: Harness) -> None:
    with pytest.raises(NotFound, match="unknown worker 'ghost'"):
        started.engine.expected_upload(PushHeader("ghost", 1, "u", 10))


def test_expected_upload_non_participant(started: Harness) -> None:
    started.join("C")
    with pytest.raises(FailedPrecondition, match="worker C is not a participant of round 1"):
        started.engine.expected_upload(PushHeader("C", 1, "u", 10))


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
        h.engine.expected_upload(PushHeader("A", 2, "u", 1))
    assert h.store.pushes(2) == {}
    assert h.engine.current is not None and h.engine.current.pushed == {}


def test_push_before_any_round(h: Harness) -> None:
    h.join("A")
    with pytest.raises(FailedPrecondition, match=r"round 1 is not open \(current: none"):
        h.push("A", 1, 1.0, 1)


def test_commit_unknown_worker(started: Harness) -> None:
    with pytest.raises(NotFound):
        started.push("ghost", 1, 1.0, 1)


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
        h.engine.expected_upload(PushHeader("A", 2, "u", 1))
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
