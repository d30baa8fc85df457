"""fedtree with a personal expert (fedtree.personal, beyond the paper) end to end on a tiny BERT."""

from __future__ import annotations

import torch
from peft import PeftModel
from test_federation import TRAIN, _run_all, _worker
from transformers import AutoModelForSequenceClassification

from common.exit_codes import ExitCode
from worker.checkpoint import resume
from worker.model import build_model
from worker.personal import PersonalExperts
from worker.strategies import create_worker_strategy

FEDTREE = {"warmup_rounds": 2, "tau": -1.0, "personal": True, "personal_init": 0.25}


def test_fedtree_with_personal_expert(coordinator_factory, tiny_model_dir, client_data, tmp_path):
    coord = coordinator_factory(strategy="fedtree", rounds=4, min_workers=4, train=TRAIN, fedtree=FEDTREE)
    labels = [("sports", "tech"), ("sports", "tech"), ("food", "tech"), ("food", "tech")]
    workers = [_worker(coord, tiny_model_dir, client_data(f"p{i}", labels[i]), tmp_path / f"o{i}", f"p{i}") for i in range(4)]
    assert _run_all(workers) == [ExitCode.OK] * 4
    engine = coord.engine
    assert engine.done and engine.strategy.built_round == 2
    layers = sorted(workers[0].lm.params)
    for worker in workers:
        assert worker.run.fedtree.personal and worker.run.fedtree.personal_init == 0.25  # travelled in the RunSpec
        mixed = worker.strategy.mixed
        assert isinstance(mixed, PersonalExperts)
        weights = mixed.personal_weights()
        assert all(0 < w < 1 for w in weights.values()) and any(w != 0.25 for w in weights.values())  # phi trained
        # the personal expert is not the cluster expert (which every pull overwrites)
        assert any(
            not torch.equal(mixed.personal[layer][name], worker.lm.params[layer][name])
            for layer in layers
            for name in mixed.personal[layer]
        )
    # after warmup every push reports personal_<layer> (and lambda_<layer>) and carries what it
    # carried in the last warmup round (the cluster expert, A and B): the personal expert stays home
    for round in (3, 4):
        pushes = engine.store.pushes(round)
        assert sorted(pushes) == ["p0", "p1", "p2", "p3"]
        for worker_id, push in pushes.items():
            for layer in layers:
                assert 0 < push["metrics"][f"personal_{layer}"] < 1 and f"lambda_{layer}" in push["metrics"]
            assert push["bytes"] == engine.store.pushes(2)[worker_id]["bytes"]
    # the exported adapter (rank 3r) reproduces the worker's logits
    worker = workers[0]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2, ignore_mismatched_sizes=True)
    reloaded = PeftModel.from_pretrained(base, str(worker.out / "adapter")).eval()
    assert reloaded.peft_config["default"].r == 3 * worker.run.lora.rank
    worker.lm.model.eval()
    enc = worker.lm.tokenizer(["goal for the team", "new phone chip"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = worker.lm.model(**enc).logits
        torch.testing.assert_close(reloaded(**enc).logits, expected, rtol=1e-4, atol=1e-5)
    # a restarted worker resumes its personal expert and phi from the checkpoint
    fresh = build_model(worker.model_path, worker.data.label_keys, worker.run.lora, worker.run.seed, worker.run.train.train_head)
    strategy = create_worker_strategy(worker.run)
    strategy.prepare(fresh)
    assert resume(fresh, strategy, worker.out, worker.run) == 4
    assert isinstance(strategy.mixed, PersonalExperts)
    assert strategy.mixed.personal_weights() == worker.strategy.mixed.personal_weights()
    fresh.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(**enc).logits, expected)
