"""System test: `fedtree-demo` with a coordinator and 2 worker processes, 2 rounds, real MiniLM
and real corpora, over loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
from demo_runner import run_demo

from coordinator.state import StateStore


@pytest.mark.system
@pytest.mark.corpora
@pytest.mark.minilm
def test_two_worker_processes_two_rounds_on_minilm(tmp_path: Path) -> None:
    out = tmp_path / "run"
    stdout = run_demo(
        out,
        "--workers",
        "2",
        "--rounds",
        "2",
        "--train-size",
        "48",
        "--val-size",
        "24",
        "--local-epochs",
        "1",
        "--tasks",
        "bbc_news",
    )
    assert "demo finished in" in stdout
    store = StateStore(out / "state")
    evals = store.evaluations()
    assert sorted(evals) == [1, 2] and sorted(evals[2]) == ["client-0", "client-1"]
    rounds = store.rounds()
    assert [r["pushes"] for r in rounds] == [2, 2] and all(r["bytes"] > 0 for r in rounds)
    for client in ("client-0", "client-1"):
        adapter = out / "workers" / client / "adapter"
        assert (adapter / "adapter_model.safetensors").exists()
        # each worker only ever saw its own partition directory
        assert (out / "data" / client / "train.jsonl").exists()
    store.close()
