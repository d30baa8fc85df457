"""fedtree end to end on a tiny BERT: warmup, tree, mixed experts, persistence across a restart."""

from __future__ import annotations

import os

import torch
from peft import PeftModel
from test_federation import TRAIN, _run_all, _worker
from transformers import AutoModelForSequenceClassification

from common.exit_codes import ExitCode
from coordinator.engine import RoundEngine
from coordinator.state import StateStore

FEDTREE = {"warmup_rounds": 2, "tau": -1.0}  # tau=-1: split wherever the silhouette is positive


def test_fedtree_four_workers(coordinator_factory, tiny_model_dir, client_data, tmp_path):
    coord = coordinator_factory(strategy="fedtree", rounds=4, min_workers=4, train=TRAIN, fedtree=FEDTREE)
    labels = [("sports", "tech"), ("sports", "tech"), ("food", "tech"), ("food", "tech")]
    workers = [_worker(coord, tiny_model_dir, client_data(f"t{i}", labels[i]), tmp_path / f"o{i}", f"t{i}") for i in range(4)]
    assert _run_all(workers) == [ExitCode.OK] * 4
    engine = coord.engine
    strategy = engine.strategy
    assert engine.done and strategy.tree is not None and strategy.built_round == 2
    assert sorted(strategy.tree.leaves) == ["t0", "t1", "t2", "t3"]
    assert strategy.cuts == sorted(strategy.cuts) and all(1 <= c < 4 for c in strategy.cuts)
    # warmup: round 1 uploads nothing, round 2 uploads everything
    rounds = engine.store.rounds()
    assert rounds[0]["bytes"] == 0 and all(r["bytes"] > 0 for r in rounds[1:])
    # every worker switched to mixed experts; lambda pinned to 1 exactly where its layer has one cluster
    for worker in workers:
        assert worker.strategy.mixed is not None
        for layer, lam in worker.strategy.mixed.lams().items():
            assert (lam == 1.0) == (strategy.cuts[layer] == 1)
    # the exported adapter is a standard rank-2r PEFT adapter reproducing the worker's logits
    worker = workers[0]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2, ignore_mismatched_sizes=True)
    reloaded = PeftModel.from_pretrained(base, str(worker.out / "adapter")).eval()
    worker.lm.model.eval()
    enc = worker.lm.tokenizer(["goal for the team", "new phone chip"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**enc).logits, worker.lm.model(**enc).logits, rtol=1e-4, atol=1e-5)

    # the tree, the cuts and the clusters survive a coordinator restart
    meta = engine.store.get("strategy_meta")
    assert meta["cuts"] == strategy.cuts and meta["clusters"] == strategy.clusters()
    coord.stop(grace=0.1)
    restarted = RoundEngine(coord.config, StateStore(coord.config.state_dir))
    assert restarted.strategy.tree == strategy.tree and restarted.strategy.cuts == strategy.cuts
    for w in ("t0", "t3"):
        old = {(d.layer, d.role): d.tensors for d in strategy.downloads(w, 5)}
        new = {(d.layer, d.role): d.tensors for d in restarted.strategy.downloads(w, 5)}
        assert old.keys() == new.keys()
        for key in old:
            for name in old[key]:
                torch.testing.assert_close(old[key][name], new[key][name])


def test_exports_from_worker_checkpoint_and_coordinator_state(coordinator_factory, tiny_model_dir, client_data, tmp_path):
    """`worker export` rebuilds the adapter from the local checkpoint; `coordinator export` writes
    the same LoRA tensors from the coordinator's experts and the lambdas the worker reported."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    coord = coordinator_factory(strategy="fedtree", rounds=3, min_workers=4, train=TRAIN, fedtree=FEDTREE)
    labels = [("sports", "tech"), ("sports", "tech"), ("food", "tech"), ("food", "tech")]
    workers = [_worker(coord, tiny_model_dir, client_data(f"e{i}", labels[i]), tmp_path / f"o{i}", f"e{i}") for i in range(4)]
    assert _run_all(workers) == [ExitCode.OK] * 4
    state_dir = coord.config.state_dir
    coord.stop(grace=0.1)

    def run(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr

    run("worker", "export", "--output-dir", str(tmp_path / "o1"), "--to", str(tmp_path / "w-export"))
    run("coordinator", "export", "--state-dir", str(state_dir), "--worker", "e1", "--to", str(tmp_path / "c-export"))
    from_worker = load_file(str(tmp_path / "w-export" / "adapter_model.safetensors"))
    from_coord = load_file(str(tmp_path / "c-export" / "adapter_model.safetensors"))
    lora_keys = {k for k in from_worker if "lora_" in k}
    assert lora_keys == set(from_coord)
    for key in lora_keys:
        torch.testing.assert_close(from_coord[key], from_worker[key], rtol=1e-4, atol=1e-6)
    assert any("classifier" in k for k in from_worker)  # the head stays with the worker's export only
    # exported adapters are ordinary files: the weights as readable as the config beside them (not 0600)
    for export in ("w-export", "c-export", "o1/adapter"):
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / export).iterdir() if p.is_file()}
        assert modes["adapter_model.safetensors"] == modes["adapter_config.json"] == 0o666 & ~_umask(), (export, modes)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
