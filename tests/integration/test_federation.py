"""A real coordinator on port 0 with in-process workers on a tiny BERT: full rounds end to end."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from common.config import DataConfig, WorkerConfig
from common.exit_codes import ExitCode
from worker.runner import Worker


def _worker(
    coord: object, tiny_model_dir: Path, data_dir: Path, out: Path, worker_id: str, token: str | None = None, **extra: object
) -> Worker:
    """A loopback worker of the coordinator under test; `extra`: more WorkerConfig fields (e.g. precision)."""
    cfg = WorkerConfig(
        worker_id=worker_id,
        coordinator=f"127.0.0.1:{coord.port}",  # type: ignore[attr-defined]
        model_path=tiny_model_dir,
        data=DataConfig(dir=data_dir),
        output_dir=out,
        progress=False,
        connect_timeout_s=20,
        heartbeat_s=0.5,
        token=token,
        insecure=True,
        **extra,  # type: ignore[arg-type]
    )
    return Worker(cfg)


def _run_all(workers: list[Worker], timeout: float = 120) -> list[int]:
    codes: list[int] = [-1] * len(workers)

    def target(i: int) -> None:
        codes[i] = workers[i].run_forever()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "workers did not finish"
    return codes


TRAIN = {"local_steps": 3, "batch_size": 8, "max_seq_length": 16, "learning_rate": 1e-2}


def test_fedit_two_workers_two_rounds(coordinator_factory, tiny_model_dir, client_data, tmp_path):
    coord = coordinator_factory(strategy="fedit", train=TRAIN)
    workers = [
        _worker(coord, tiny_model_dir, client_data(f"w{i}", labels), tmp_path / f"out{i}", f"w{i}")
        for i, labels in enumerate([("sports", "tech"), ("food", "sports", "tech")])
    ]
    assert _run_all(workers) == [ExitCode.OK, ExitCode.OK]

    engine = coord.engine
    assert engine.done and engine.last_closed == 2
    evals = engine.store.evaluations()
    assert sorted(evals) == [1, 2] and sorted(evals[2]) == ["w0", "w1"]
    assert all(0.0 <= m["accuracy"] <= 1.0 for r in evals.values() for m in r.values())
    assert [r["pushes"] for r in engine.store.rounds()] == [2, 2]
    # After the final evaluation both workers hold exactly the FedIT global adapter ...
    global_adapter = engine.strategy.global_adapter
    for worker in workers:
        for layer, tensors in worker.lm.layers().items():
            for name, tensor in tensors.items():
                torch.testing.assert_close(tensor, global_adapter[layer][name])
        # ... and leave a PEFT adapter directory plus their local head on disk.
        adapter = worker.out / "adapter"
        assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
        assert "modules_to_save" in (adapter / "adapter_config.json").read_text()
    # Heads are local: different label counts, never aggregated.
    assert workers[0].lm.head_state().keys() == workers[1].lm.head_state().keys()
    assert (Path(engine.store.checkpoints) / "round-00002.safetensors").exists()


def test_local_strategy_shares_nothing(coordinator_factory, tiny_model_dir, client_data, tmp_path):
    coord = coordinator_factory(strategy="local", rounds=1, train=TRAIN)
    workers = [_worker(coord, tiny_model_dir, client_data(f"l{i}"), tmp_path / f"o{i}", f"l{i}") for i in range(2)]
    assert _run_all(workers) == [ExitCode.OK, ExitCode.OK]
    assert coord.engine.store.rounds()[0]["bytes"] == 0
    a, b = (w.lm.layers()[0]["attention.self.query.lora_B.weight"] for w in workers)
    assert not torch.equal(a, b), "local workers must keep their own adapters"


def test_fingerprint_mismatch_refused_at_join(coordinator_factory, tiny_model_dir, client_data, tmp_path):
    coord = coordinator_factory(strategy="fedit", min_workers=2, train=TRAIN)
    first = _worker(coord, tiny_model_dir, client_data("f0"), tmp_path / "o0", "f0")
    first.setup()
    fixed = coord.engine.fingerprint
    # A worker whose run seed differs gets a different LoRA init -> a different fingerprint.
    coord.engine.run = coord.engine.run.model_copy(update={"seed": 7})
    second = _worker(coord, tiny_model_dir, client_data("f1"), tmp_path / "o1", "f1")
    code = second.run_forever()
    assert code == 3
    assert coord.engine.fingerprint == fixed and "f1" not in coord.engine.workers
    first.client.close()


@pytest.mark.parametrize("bad", ["nan", "shape"])
def test_worker_logs_rejected_push(coordinator_factory, tiny_model_dir, client_data, tmp_path, caplog, bad):
    coord = coordinator_factory(strategy="fedit", min_workers=1, rounds=1, train=TRAIN)
    worker = _worker(coord, tiny_model_dir, client_data("r0"), tmp_path / "o", "r0")
    original = worker.update_for

    def corrupt(upload):  # type: ignore[no-untyped-def]
        update = original(upload)
        name = next(iter(update[0]))
        update[0][name] = torch.full_like(update[0][name], float("nan")) if bad == "nan" else update[0][name][:1]
        return update

    worker.update_for = corrupt  # type: ignore[method-assign]
    with caplog.at_level("ERROR"):
        assert worker.run_forever() == 3
    assert "rejected" in caplog.text and ("NaN" in caplog.text or "shape" in caplog.text)
    assert coord.engine.last_closed == 0 and coord.engine.store.pushes(1) == {}
