"""Exporting from a live coordinator's state directory changes nothing: the tree-building round
it runs during still closes with every worker's (spilled) upload in the tree."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import grpc
import pytest
import torch
from test_bad_pushes import CHUNK, chunks_of, push

from common import serde
from common.errors import FailedPrecondition
from common.grpc_options import CHANNEL_OPTIONS
from common.schema import schema_of
from common.types import JoinRequest
from coordinator.export import write_adapter
from coordinator.state_view import StateView
from proto.fedtree.v1 import federation_pb2_grpc as pb_grpc

A, B = "attn.q.lora_A.weight", "attn.q.lora_B.weight"
WORKERS = ("w0", "w1", "w2", "w3")
# warmup_rounds 1: round 1 (the last warmup round) builds the tree; rebuild_every 1: round 2 rebuilds it;
# euclidean: the groups are planted in B's sign, which the span distance ignores by design
FEDTREE = {"warmup_rounds": 1, "rebuild_every": 1, "tau": -1.0, "metric": "euclidean"}


def planted(worker: str, round: int) -> dict[int, dict[str, torch.Tensor]]:
    """Two planted groups (w0, w1) and (w2, w3), a little noise per worker and round."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{worker}/{round}".encode()))
    sign = 1.0 if worker in ("w0", "w1") else -1.0
    return {
        layer: {A: sign + 0.1 * torch.randn(4, 32, generator=gen), B: sign + 0.1 * torch.randn(32, 4, generator=gen)}
        for layer in (0, 1)
    }


def spill(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((state / "spill").glob("*"))}


def cli_export(state: Path, worker: str, to: Path) -> subprocess.CompletedProcess[str]:
    args = ["coordinator", "export", "--state-dir", str(state), "--worker", worker, "--to", str(to)]
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=180)


def test_export_during_the_tree_building_round_leaves_every_upload_in_the_tree(coordinator_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    coord = coordinator_factory(strategy="fedtree", rounds=2, min_workers=4, chunk_size=CHUNK, fedtree=FEDTREE)
    state = coord.config.state_dir
    engine = coord.engine
    with grpc.insecure_channel(f"127.0.0.1:{coord.port}", options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.FederationStub(channel)
        for w in WORKERS:
            stub.Join(serde.join_to_proto(JoinRequest(w, "fingerprint-1", 10, schema_of(planted(w, 0)))), timeout=10)
        assert engine.current is not None and engine.current.round == 1

        # round 1, the last warmup round: half the uploads are in (spilled to disk), then a reader
        for w in WORKERS[:2]:
            assert push(stub, chunks_of(planted(w, 1), round=1), round=1, worker=w, upload=f"{w}-1").accepted
        spilled = spill(state)
        assert len(spilled) == 2
        with StateView.open(state) as view, pytest.raises(FailedPrecondition, match="keeps no adapter"):
            write_adapter(view, "w0", tmp_path / "too-early")  # no tree yet: nothing to export
        assert spill(state) == spilled and set(engine.store.pushes(1)) == {"w0", "w1"}
        for w in WORKERS[2:]:
            push(stub, chunks_of(planted(w, 1), round=1), round=1, worker=w, upload=f"{w}-1")
        strategy = engine.strategy
        assert engine.last_closed == 1 and strategy.built_round == 1  # type: ignore[union-attr]
        assert sorted(strategy.tree.leaves) == list(WORKERS)  # type: ignore[union-attr]
        assert strategy.clusters()[0] == [["w0", "w1"], ["w2", "w3"]]  # type: ignore[union-attr]
        assert engine.checkpointer.wait(30)  # round 2 opens once round 1's checkpoint is on disk

        # round 2 rebuilds the tree: the operator exports w0's adapter (CLI, another process) mid-round
        for w in WORKERS[:3]:
            push(stub, chunks_of(planted(w, 2), round=2), round=2, worker=w, upload=f"{w}-2")
        spilled = spill(state)
        assert len(spilled) == 3
        done = cli_export(state, "w0", tmp_path / "adapter")
        assert done.returncode == 0, done.stderr
        assert "after round 1" in done.stdout and (tmp_path / "adapter" / "adapter_model.safetensors").exists()
        assert spill(state) == spilled and set(engine.store.pushes(2)) == set(WORKERS[:3])
        push(stub, chunks_of(planted("w3", 2), round=2), round=2, worker="w3", upload="w3-2")
    assert engine.last_closed == 2 and strategy.built_round == 2  # type: ignore[union-attr]
    assert engine.checkpointer.wait(30)
    assert sorted(strategy.tree.leaves) == list(WORKERS)  # type: ignore[union-attr]
    assert engine.store.rounds()[1]["participants"] == list(WORKERS) and engine.store.rounds()[1]["pushes"] == 4
