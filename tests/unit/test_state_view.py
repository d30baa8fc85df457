"""Reading the state never changes it: StateView (export, inspection) and an engine not yet resumed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from engine_harness import Harness, as_lists, config

from common.errors import FailedPrecondition, NotFound
from coordinator.engine import RoundEngine
from coordinator.export import write_adapter
from coordinator.state import StateStore
from coordinator.state_view import StateView
from coordinator.strategies.fedit import FedIT

# SQLite's own side files: a reader takes its read locks in the shared-memory index (-shm), and a
# connection creates an empty -wal where none is. Neither holds state.
SIDE_FILES = ("-shm", "-wal")


def state_files(root: Path, skip: tuple[str, ...] = ("-shm",)) -> dict[str, tuple[int, bytes]]:
    """Every file of the state directory: mtime and contents."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(skip)
    }


def mid_round(state: Path) -> Harness:
    """Round 1 closed, round 2 open with A's push in, and a spilled upload of round 2 on disk."""
    h = Harness(state)
    h.join("A")
    h.join("B")
    assert h.task("A").round == 1
    h.push("A", 1, 1.0, 1)
    h.push("B", 1, 3.0, 3)
    h.push("A", 2, 2.0, 1)
    assert h.engine.last_closed == 1 and h.store.pushes(2).keys() == {"A"}
    (state / "spill").mkdir()
    (state / "spill" / "a.safetensors").write_bytes(b"A's upload of round 2")
    return h


def test_view_of_a_live_state_reads_the_last_closed_round_and_writes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    h = mid_round(state)
    before = state_files(state)
    with StateView.open(state) as view:
        assert view.store.read_only and view.last_closed == 1 and view.run == h.engine.run
        assert set(view.workers) == {"A", "B"} and view.schema == h.engine.schema and view.run_id == h.engine.run_id
        assert isinstance(view.strategy, FedIT)
        assert as_lists(view.strategy.global_adapter) == h.global_adapter()
        write_adapter(view, "A", tmp_path / "export")
        for write in (
            lambda: view.store.put(paused=True),
            lambda: view.store.discard_pushes(2),
            lambda: view.store.record_push(2, "B", "u", 1, {}, 1),
            lambda: view.store.upsert_worker("C", 1),
        ):
            with pytest.raises(FailedPrecondition, match="read-only"):
                write()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # SQLite itself refuses, too
            view.store._db.execute("DELETE FROM pushes")
    assert state_files(state) == before
    assert (tmp_path / "export" / "adapter_model.safetensors").exists()
    # the live engine carries on: the open round closes with both pushes
    h.push("B", 2, 4.0, 3)
    assert h.engine.last_closed == 2 and h.store.rounds()[1]["pushes"] == 2


def test_an_engine_changes_nothing_until_resume_takes_the_state_over(tmp_path: Path) -> None:
    state = tmp_path / "state"
    h = mid_round(state)
    h.store.close()  # the coordinator died with round 2 open
    before = state_files(state, skip=SIDE_FILES)
    store = StateStore(state)
    engine = RoundEngine(config(state), store)
    assert engine.last_closed == 1 and isinstance(engine.strategy, FedIT)
    assert state_files(state, skip=SIDE_FILES) == before
    with pytest.raises(RuntimeError, match="resume"):  # it opens no round before resume()
        engine.tick()
    engine.resume()
    assert store.pushes(2) == {} and not (state / "spill").exists()  # re-requested
    assert store.get("config") == engine.config.model_dump(mode="json") and store.get("run_id") == engine.run_id
    store.close()


def test_view_refuses_a_directory_without_a_served_state(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no coordinator state"):
        StateView.open(tmp_path)
    assert list(tmp_path.iterdir()) == []  # not even a checkpoints directory
    StateStore(tmp_path).close()  # tables, but no coordinator ever served it
    with pytest.raises(FailedPrecondition, match="no run config"):
        StateView.open(tmp_path)
