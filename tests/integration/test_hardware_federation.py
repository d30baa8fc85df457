"""Workers of one run on different hardware settings: a bf16 worker and a float32 worker share the
fingerprint, both rounds close, and the bf16 worker's uploads match the run's float32 schema."""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from test_federation import _worker as federation_worker

from common.exit_codes import ExitCode
from worker.runner import Worker


def _worker(coord: object, model_dir: Path, data_dir: Path, out: Path, worker_id: str, **hardware: object) -> Worker:
    return federation_worker(coord, model_dir, data_dir, out, worker_id, device="cpu", **hardware)


def test_bf16_and_float32_workers_share_a_run(coordinator_factory, tiny_model_dir, client_data, tmp_path):  # type: ignore[no-untyped-def]
    train = {"local_steps": 2, "batch_size": 4, "gradient_accumulation_steps": 2, "max_seq_length": 16, "learning_rate": 1e-2}
    coord = coordinator_factory(strategy="fedit", train=train)
    workers = [
        _worker(coord, tiny_model_dir, client_data("fp32"), tmp_path / "o0", "fp32"),
        _worker(
            coord,
            tiny_model_dir,
            client_data("bf16"),
            tmp_path / "o1",
            "bf16",
            precision="bf16",
            train={"gradient_checkpointing": True},
        ),
    ]
    codes: list[int] = [-1, -1]
    threads = [threading.Thread(target=lambda i=i: codes.__setitem__(i, workers[i].run_forever())) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == [ExitCode.OK, ExitCode.OK]
    engine = coord.engine
    assert engine.done and engine.last_closed == 2
    assert [r["pushes"] for r in engine.store.rounds()] == [2, 2]  # every upload passed the schema check
    assert sorted(engine.workers) == ["bf16", "fp32"] and engine.fingerprint == workers[0].lm.fingerprint
    assert workers[0].lm.fingerprint == workers[1].lm.fingerprint
    assert workers[1].run.train.gradient_accumulation_steps == 2  # from the run spec, on every worker
    # the bf16 worker: 16-bit frozen base, float32 adapter that holds the global FedIT adapter
    params = dict(workers[1].lm.model.named_parameters())
    assert params["base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"].dtype == torch.bfloat16
    global_adapter = engine.strategy.global_adapter
    for worker in workers:
        for layer, tensors in worker.lm.layers().items():
            for name, tensor in tensors.items():
                assert tensor.dtype == torch.float32
                torch.testing.assert_close(tensor, global_adapter[layer][name])
