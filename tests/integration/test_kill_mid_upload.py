"""A worker process SIGKILLed in the middle of a push: nothing of the partial upload -- not even
the layers it completed -- enters the aggregate; the worker comes back with the same identity and
its complete push counts once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import torch

from common import serde
from common.grpc_options import CHANNEL_OPTIONS
from common.schema import schema_of
from common.types import JoinRequest, PushHeader
from proto.fedtree.v1 import federation_pb2_grpc as pb_grpc
from worker.client import FederationClient

HERE = Path(__file__).resolve().parent
A, B = "attn.q.lora_A.weight", "attn.q.lora_B.weight"


def update(value: float) -> dict[int, dict[str, torch.Tensor]]:
    """Three layers of 8 KiB tensors: each layer's blob is ~17 chunks of 1 KiB."""
    return {layer: {A: torch.full((4, 512), value), B: torch.full((512, 4), value)} for layer in range(3)}


def test_sigkill_mid_upload_leaves_no_trace(coordinator_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    coord = coordinator_factory(strategy="fedit", rounds=1, min_workers=2, chunk_size=1024)
    channel = grpc.insecure_channel(f"127.0.0.1:{coord.port}", options=CHANNEL_OPTIONS)
    stub = pb_grpc.FederationStub(channel)
    stub.Join(serde.join_to_proto(JoinRequest("honest", "fingerprint-1", 10, schema_of(update(0.0)))), timeout=10)

    # the victim: layer 0 complete (~17 chunks) and part of layer 1 sent, then SIGKILL
    victim = subprocess.run(
        [sys.executable, str(HERE / "dying_pusher.py"), str(coord.port), "victim", "1000", "25"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=HERE,
    )
    assert victim.returncode == -signal.SIGKILL, victim.stdout + victim.stderr
    assert "dying" in victim.stdout

    engine = coord.engine
    assert engine.store.pushes(1) == {}  # nothing committed
    assert engine.store.last_closed_round() == 0  # the round waits: the victim is still a participant

    # the victim restarts with the same identity and pushes its real update; the honest worker pushes too
    for worker, value in (("victim", 3.0), ("honest", 1.0)):
        client = FederationClient(f"127.0.0.1:{coord.port}", worker, retry_for_s=30, insecure=True)
        client.join(JoinRequest(worker, "fingerprint-1", 10, schema_of(update(value))))
        task = client.get_task(wait_s=5)
        assert task.kind.name == "TRAIN" and task.round == 1
        client.push(PushHeader(worker, 1, f"{worker}-real", 10, {}), update(value), 1024)
        client.close()

    pushes = engine.store.pushes(1)
    assert sorted(pushes) == ["honest", "victim"] and pushes["victim"]["upload_id"] == "victim-real"
    assert engine.checkpointer.wait(30)  # written after the closing push was acknowledged
    ckpt = engine.store.load_checkpoint(1)
    for layer in range(3):  # mean of the complete pushes only: (3 + 1) / 2, the partial 1000s never counted
        for name in (A, B):
            torch.testing.assert_close(ckpt[f"global/{layer}/{name}"], torch.full_like(update(0.0)[layer][name], 2.0))
    channel.close()
