"""FedTreeLoRA's mixed experts on peft, and export as a standard rank-2r PEFT adapter that
reproduces the worker's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lora_helpers import LORA, TEXTS, fedtree_worker, logits, randomise
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from common.chunking import Role
from worker.export import export_adapter
from worker.mixed import MixedExperts
from worker.model import LoraModel, build_model


def reload(path: Path, adapter: Path, num_labels: int) -> torch.nn.Module:
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, ignore_mismatched_sizes=True)
    return PeftModel.from_pretrained(base, str(adapter))


def make_mixed(lm: LoraModel, pinned_layer: int | None) -> MixedExperts:
    mixed = MixedExperts(lm, LORA)
    cluster, external = randomise(lm, 1), randomise(lm, 2)
    pulled = {layer: {Role.CLUSTER: cluster[layer]} for layer in lm.params}
    for layer in lm.params:
        if layer != pinned_layer:
            pulled[layer][Role.EXTERNAL] = external[layer]
    mixed.load(pulled)
    with torch.no_grad():
        for i, theta in enumerate(mixed.theta.values()):
            theta.fill_(0.4 + 0.5 * i)
    return mixed


def check_export(model_path: Path, tmp_path: Path, mixed_mode: bool) -> None:
    lm = build_model(model_path, ("a", "b", "c"), LORA, seed=0, train_head=True)
    lm.load_layers(randomise(lm, 0))
    with torch.no_grad():
        for p in lm.head_parameters():
            p.add_(0.1)
    mixed = make_mixed(lm, pinned_layer=0) if mixed_mode else None
    expected = logits(lm.model, lm)
    out = export_adapter(lm, fedtree_worker(lm, mixed), model_path, 3, LORA, tmp_path / "adapter")
    reloaded = reload(model_path, out, 3)
    torch.testing.assert_close(logits(reloaded, lm), expected, rtol=1e-4, atol=1e-5)
    assert reloaded.peft_config["default"].r == LORA.rank * (2 if mixed_mode else 1)


@pytest.mark.parametrize("mixed_mode", [False, True], ids=["plain", "mixed"])
def test_export_reproduces_logits_tiny(tiny_model_dir: Path, tmp_path: Path, mixed_mode: bool) -> None:
    check_export(tiny_model_dir, tmp_path, mixed_mode)


@pytest.mark.minilm
def test_export_reproduces_logits_minilm(tmp_path: Path) -> None:
    from worker.model import default_model_path

    check_export(default_model_path(), tmp_path, mixed_mode=True)


def test_mixed_forward_matches_formula(tiny_model_dir: Path) -> None:
    """h = W0 x + s (lam B_c A_c x + (1-lam) B_e A_e x) on one adapted module."""
    lm = build_model(tiny_model_dir, ("a", "b"), LORA, seed=0, train_head=True)
    mixed = make_mixed(lm, pinned_layer=None)
    module = lm.model.base_model.model.bert.encoder.layer[1].attention.self.query
    x = torch.randn(5, module.in_features)
    lam = torch.sigmoid(mixed.theta["1"]).detach()
    s = LORA.alpha / LORA.rank
    a_c, b_c = module.lora_A["default"].weight, module.lora_B["default"].weight
    a_e, b_e = module.lora_A["external"].weight, module.lora_B["external"].weight
    expected = module.base_layer(x) + s * (lam * x @ a_c.T @ b_c.T + (1 - lam) * x @ a_e.T @ b_e.T)
    lm.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-6)


def test_only_cluster_expert_and_theta_train(tiny_model_dir: Path) -> None:
    lm = build_model(tiny_model_dir, ("a", "b"), LORA, seed=0, train_head=False)
    mixed = make_mixed(lm, pinned_layer=0)
    trainable = {n for n, p in lm.model.named_parameters() if p.requires_grad}
    assert all(".external." not in n for n in trainable)
    assert any(".default." in n for n in trainable) and any("fedtree_theta" in n for n in trainable)
    assert not any("classifier" in n for n in trainable)
    lm.model.train()
    enc = lm.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    lm.model(**enc, labels=torch.tensor([0, 1])).loss.backward()
    assert mixed.theta["1"].grad is not None and float(mixed.theta["1"].grad.abs()) > 0
    assert mixed.theta["0"].grad is None  # layer 0 has one cluster: lambda pinned to 1
    assert mixed.lams()[0] == 1.0


def test_personalised_layers_shapes(tiny_model_dir: Path) -> None:
    lm = build_model(tiny_model_dir, ("a", "b"), LORA, seed=0, train_head=True)
    mixed = make_mixed(lm, pinned_layer=0)
    adapter = fedtree_worker(lm, mixed).personalised()
    layers = adapter.layers
    assert adapter.rank_multiplier == 2
    a = layers[1]["attention.self.query.lora_A.weight"]
    b = layers[1]["attention.self.query.lora_B.weight"]
    assert a.shape == (2 * LORA.rank, 32) and b.shape == (32, 2 * LORA.rank)
    # pinned layer: lam = 1, so the external half of B' is zero
    assert torch.count_nonzero(layers[0]["attention.self.query.lora_B.weight"][:, LORA.rank :]) == 0


def test_checkpoint_round_trip_restores_the_personalised_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from common.config import RunConfig
    from worker.checkpoint import load_checkpoint, resume, save_checkpoint
    from worker.strategies import create_worker_strategy

    run = RunConfig(strategy="fedtree", lora=LORA)
    lm = build_model(tiny_model_dir, ("a", "b", "c"), LORA, seed=0, train_head=True)
    lm.load_layers(randomise(lm, 0))
    mixed = make_mixed(lm, pinned_layer=0)
    expected = logits(lm.model, lm)
    save_checkpoint(tmp_path, lm, fedtree_worker(lm, mixed, run), run, ["a", "b", "c"], tiny_model_dir, round=4)
    restored = load_checkpoint(tmp_path)
    assert restored.round == 4 and restored.strategy.mixed is not None and restored.strategy.mixed.pinned == {0}
    torch.testing.assert_close(logits(restored.lm.model, restored.lm), expected)
    fresh = build_model(tiny_model_dir, ("a", "b", "c"), LORA, seed=0, train_head=True)
    strategy = create_worker_strategy(run)
    strategy.prepare(fresh)
    assert resume(fresh, strategy, tmp_path, run.model_copy(update={"seed": 1})) is None  # another run's state is ignored
    assert resume(fresh, strategy, tmp_path, run) == 4
    torch.testing.assert_close(logits(fresh.model, fresh), expected)
