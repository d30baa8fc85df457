"""fedtree.personal (beyond the paper): a third, personal expert beside the cluster and external
ones, mixed by softmax(phi_l); never uploaded, never overwritten by a pull, checkpointed, and
exported as an exact rank-3r PEFT adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lora_helpers import LORA, TEXTS, Layers, fedtree_worker, logits, randomise
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification

from common.chunking import Role
from common.config import FedTreeConfig, RunConfig
from common.schema import UploadSpec
from worker.export import export_adapter
from worker.mixed import EXTERNAL, MixedExperts
from worker.model import LoraModel, build_model
from worker.personal import PERSONAL, PersonalExperts, mixed_experts


def pulled(lm: LoraModel, seed: int, pinned_layer: int | None) -> dict[int, dict[Role, dict[str, torch.Tensor]]]:
    """Cluster experts for every layer; external experts except in `pinned_layer` (one cluster)."""
    cluster, external = randomise(lm, seed), randomise(lm, seed + 100)
    out = {layer: {Role.CLUSTER: cluster[layer]} for layer in lm.params}
    for layer in lm.params:
        if layer != pinned_layer:
            out[layer][Role.EXTERNAL] = external[layer]
    return out


def warm_model(tiny_model_dir: Path, labels: tuple[str, ...] = ("a", "b", "c")) -> tuple[LoraModel, Layers]:
    """A model whose own adapter is 'the end of warmup' (random, non-zero), and that adapter."""
    lm = build_model(tiny_model_dir, labels, LORA, seed=0, train_head=True)
    own = randomise(lm, 0)
    lm.load_layers(own)
    return lm, own


def make_personal(tiny_model_dir: Path, pinned_layer: int | None = 0) -> tuple[LoraModel, PersonalExperts, Layers]:
    lm, own = warm_model(tiny_model_dir)
    mixed = PersonalExperts(lm, LORA, lambda_init=0.7, personal_init=0.2)
    mixed.load(pulled(lm, 1, pinned_layer))
    with torch.no_grad():  # a non-trivial, layer-dependent mix
        for i, phi in enumerate(mixed.phi.values()):
            phi.copy_(torch.tensor([0.3 + 0.4 * i, -0.2 * i, 0.5 - 0.3 * i]))
    return lm, mixed, own


def test_factory_builds_the_right_class(tiny_model_dir: Path) -> None:
    lm = build_model(tiny_model_dir, ("a", "b"), LORA, seed=0, train_head=True)
    assert type(mixed_experts(lm, LORA, FedTreeConfig())) is MixedExperts
    lm = build_model(tiny_model_dir, ("a", "b"), LORA, seed=0, train_head=True)
    assert type(mixed_experts(lm, LORA, FedTreeConfig(personal=True))) is PersonalExperts


def test_initial_weights(tiny_model_dir: Path) -> None:
    lm, _ = warm_model(tiny_model_dir)
    mixed = PersonalExperts(lm, LORA, lambda_init=0.7, personal_init=0.2)
    mixed.load(pulled(lm, 1, pinned_layer=0))
    torch.testing.assert_close(mixed.weights(1), torch.tensor([0.7 * 0.8, 0.3 * 0.8, 0.2]))
    torch.testing.assert_close(mixed.weights(0), torch.tensor([0.8, 0.0, 0.2]))  # one cluster: (1 - p0, p0)
    assert mixed.lams() == pytest.approx({0: 0.8, 1: 0.56})
    metrics = mixed.metrics()
    assert metrics == pytest.approx({"lambda_0": 0.8, "lambda_1": 0.56, "personal_0": 0.2, "personal_1": 0.2})
    default = PersonalExperts(build_model(tiny_model_dir, ("a",), LORA, seed=0, train_head=True), LORA)
    torch.testing.assert_close(default.weights(0), torch.tensor([2 / 3, 0.0, 1 / 3]))  # lambda_init 0.5, p0 1/3


@pytest.mark.parametrize("layer", [0, 1], ids=["one-cluster", "split"])
def test_forward_matches_formula(tiny_model_dir: Path, layer: int) -> None:
    """h = W0 x + s (w_c B_c A_c x + w_e B_e A_e x + w_p B_p A_p x), w = softmax(phi_l); in the
    one-cluster layer (no external expert) w = (w_c + w_e, 0, w_p)."""
    lm, mixed, _ = make_personal(tiny_model_dir, pinned_layer=0)
    module = lm.model.base_model.model.bert.encoder.layer[layer].attention.self.value
    w = torch.softmax(mixed.phi[str(layer)].detach(), dim=0)
    if layer == 0:
        w = torch.stack((w[0] + w[1], torch.zeros(()), w[2]))
    s = LORA.alpha / LORA.rank
    x = torch.randn(2, 5, module.in_features, generator=torch.Generator().manual_seed(3))
    expected = module.base_layer(x)
    for wi, adapter in zip(w, ("default", EXTERNAL, PERSONAL), strict=True):
        expected = expected + s * wi * (x @ module.lora_A[adapter].weight.T @ module.lora_B[adapter].weight.T)
    assert torch.count_nonzero(module.lora_B[PERSONAL].weight) > 0  # all three experts contribute
    lm.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-6)


def test_personal_expert_is_the_warmup_adapter_and_survives_pulls(tiny_model_dir: Path) -> None:
    """Worker.apply at the first round after warmup: the personal expert is the own adapter as it
    was before the pulled cluster expert overwrote it; later pulls leave it alone; the upload
    (`update_for`) carries the cluster expert only."""
    from worker.runner import Worker

    lm, own = warm_model(tiny_model_dir)
    from worker.strategies import create_worker_strategy

    worker = Worker.__new__(Worker)  # apply/update_for need the model, the run and its strategy only
    worker.lm = lm
    worker.run = RunConfig(strategy="fedtree", lora=LORA, fedtree=FedTreeConfig(warmup_rounds=1, personal=True))
    worker.strategy = create_worker_strategy(worker.run)
    worker.strategy.prepare(lm)
    first = pulled(lm, 1, pinned_layer=0)
    worker.apply(2, first)
    mixed = worker.strategy.mixed
    assert isinstance(mixed, PersonalExperts)
    for layer in lm.params:
        for name, param in mixed.personal[layer].items():
            torch.testing.assert_close(param.detach(), own[layer][name])  # the warmup adapter ...
            torch.testing.assert_close(lm.params[layer][name].detach(), first[layer][Role.CLUSTER][name])  # ... not the pull
    # train the personal expert a little, then pull again: it stays as trained
    assert all(p.requires_grad for named in mixed.personal.values() for p in named.values())
    with torch.no_grad():
        for named in mixed.personal.values():
            for param in named.values():
                param.add_(0.01)
    trained = mixed.personal_layers()
    second = pulled(lm, 7, pinned_layer=None)
    worker.apply(3, second)
    assert worker.strategy.mixed is mixed and mixed.pinned == set()
    for layer in lm.params:
        for name in trained[layer]:
            torch.testing.assert_close(mixed.personal[layer][name].detach(), trained[layer][name])
    update = worker.update_for(UploadSpec(tuple(lm.params)))
    assert update.keys() == lm.params.keys()
    for layer, tensors in update.items():
        assert tensors.keys() == lm.params[layer].keys()
        for name, tensor in tensors.items():
            torch.testing.assert_close(tensor, second[layer][Role.CLUSTER][name])
            assert not torch.equal(tensor, trained[layer][name])


def test_phi_personal_and_cluster_train_external_frozen(tiny_model_dir: Path) -> None:
    lm, mixed, _ = make_personal(tiny_model_dir, pinned_layer=0)
    trainable = {n for n, p in lm.model.named_parameters() if p.requires_grad}
    assert not any(f".{EXTERNAL}." in n for n in trainable)
    assert any(f".{PERSONAL}." in n for n in trainable) and any(".default." in n for n in trainable)
    assert mixed.theta_parameters() == list(mixed.phi.values())  # runner: their own optimiser group
    lm.model.train()
    enc = lm.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    lm.model(**enc, labels=torch.tensor([0, 1])).loss.backward()
    for layer in ("0", "1"):
        grad = mixed.phi[layer].grad
        assert grad is not None and float(grad.abs().sum()) > 0
    assert all(p.grad is not None for named in mixed.personal.values() for p in named.values())


def test_checkpoint_round_trip(tiny_model_dir: Path, tmp_path: Path) -> None:
    from worker.checkpoint import FILE, load_checkpoint, resume, save_checkpoint
    from worker.strategies import create_worker_strategy

    run = RunConfig(strategy="fedtree", lora=LORA, fedtree=FedTreeConfig(personal=True, personal_init=0.2, lambda_init=0.7))
    lm, mixed, _ = make_personal(tiny_model_dir, pinned_layer=0)
    with torch.no_grad():
        for named in mixed.personal.values():
            for param in named.values():
                param.mul_(1.5)
    expected = logits(lm.model, lm)
    save_checkpoint(tmp_path, lm, fedtree_worker(lm, mixed, run), run, ["a", "b", "c"], tiny_model_dir, round=4)
    restored = load_checkpoint(tmp_path)
    again_mixed = restored.strategy.mixed
    assert isinstance(again_mixed, PersonalExperts) and again_mixed.pinned == {0}
    assert restored.run == run
    for layer in mixed.phi:
        torch.testing.assert_close(again_mixed.phi[layer], mixed.phi[layer])
    for layer, named in mixed.personal_layers().items():
        for name, tensor in named.items():
            torch.testing.assert_close(again_mixed.personal[layer][name].detach(), tensor)
    torch.testing.assert_close(logits(restored.lm.model, restored.lm), expected)
    fresh = build_model(tiny_model_dir, ("a", "b", "c"), LORA, seed=0, train_head=True)
    strategy = create_worker_strategy(run)
    strategy.prepare(fresh)
    assert resume(fresh, strategy, tmp_path, run) == 4
    assert isinstance(strategy.mixed, PersonalExperts)
    torch.testing.assert_close(logits(fresh.model, fresh), expected)
    # a run without the option records no personal knobs: its checkpoints are what they were before
    plain = build_model(tiny_model_dir, ("a", "b", "c"), LORA, seed=0, train_head=True)
    (tmp_path / "plain").mkdir()
    plain_run = RunConfig(lora=LORA)
    plain_strategy = create_worker_strategy(plain_run)
    plain_strategy.prepare(plain)
    save_checkpoint(tmp_path / "plain", plain, plain_strategy, plain_run, ["a", "b", "c"], tiny_model_dir, round=1)
    with safe_open(str(tmp_path / "plain" / FILE), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {})["fedtree"])
        assert not any("personal" in key or "phi" in key for key in fh.keys())  # noqa: SIM118
    assert "personal" not in meta["run"]["fedtree"] and "personal_init" not in meta["run"]["fedtree"]
    assert RunConfig.model_validate(meta["run"]) == RunConfig(lora=LORA)


def test_export_reproduces_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    lm, mixed, _ = make_personal(tiny_model_dir, pinned_layer=0)
    with torch.no_grad():
        for p in lm.head_parameters():
            p.add_(0.1)
    adapter = fedtree_worker(lm, mixed).personalised()
    layers = adapter.layers
    assert adapter.rank_multiplier == 3
    b0 = layers[0]["attention.self.query.lora_B.weight"]
    assert b0.shape == (32, 3 * LORA.rank)
    assert torch.count_nonzero(b0[:, LORA.rank : 2 * LORA.rank]) == 0  # one cluster: zero external block
    expected = logits(lm.model, lm)
    out = export_adapter(lm, fedtree_worker(lm, mixed), tiny_model_dir, 3, LORA, tmp_path / "adapter")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3, ignore_mismatched_sizes=True)
    reloaded = PeftModel.from_pretrained(base, str(out))
    assert reloaded.peft_config["default"].r == 3 * LORA.rank
    assert reloaded.peft_config["default"].lora_alpha == 3 * LORA.alpha
    torch.testing.assert_close(logits(reloaded, lm), expected, rtol=1e-4, atol=1e-5)


def test_run_spec_carries_personal() -> None:
    from common.serde import run_from_proto, run_to_proto

    run = RunConfig(strategy="fedtree", fedtree=FedTreeConfig(personal=True, personal_init=0.25))
    msg = run_to_proto("r", run)
    assert msg.fedtree.personal and msg.fedtree.personal_init == 0.25
    assert run_from_proto(msg) == ("r", run)
    default = RunConfig(strategy="fedtree", fedtree=FedTreeConfig(personal=True))
    msg = run_to_proto("r", default)
    assert msg.fedtree.personal_init == 0.0  # the default travels as 0 ...
    assert run_from_proto(msg) == ("r", default)  # ... and comes back as 1/3
    plain = run_to_proto("r", RunConfig(strategy="fedtree"))
    assert not plain.fedtree.personal and plain.fedtree.personal_init == 0.0  # a plain run's RunSpec: nothing new
    with pytest.raises(ValueError):
        FedTreeConfig(personal_init=1.0)
