"""The worker halves of the strategies (worker/strategies/): one per coordinator strategy, FFA's
frozen A, FedALT's mixers surviving a restart and an export, old fedtree checkpoints loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lora_helpers import LORA, logits, randomise
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from common.chunking import Role
from common.config import RunConfig
from common.errors import ConfigError
from common.schema import UploadSpec
from coordinator.strategies import STRATEGIES
from worker.checkpoint import FILE, load_checkpoint, resume, save_checkpoint
from worker.export import export_adapter
from worker.fedalt import MIXERS_FILE, REST_OF_WORLD, load_exported
from worker.model import LoraModel, build_model
from worker.strategies import WORKER_STRATEGIES, WorkerStrategy, create_worker_strategy
from worker.strategies.fedalt import FedALTWorker

LABELS = ("a", "b", "c")


def prepared(model_dir: Path, run: RunConfig) -> tuple[LoraModel, WorkerStrategy]:
    lm = build_model(model_dir, LABELS, run.lora, run.seed, train_head=True)
    strategy = create_worker_strategy(run)
    strategy.prepare(lm)
    return lm, strategy


def test_every_coordinator_strategy_has_a_worker_half() -> None:
    assert set(WORKER_STRATEGIES) == set(STRATEGIES)
    with pytest.raises(ConfigError, match="no strategy 'nope'"):
        create_worker_strategy(RunConfig(strategy="nope"))


def test_plain_strategies_load_cluster_blobs_and_upload_what_is_asked(tiny_model_dir: Path) -> None:
    lm, strategy = prepared(tiny_model_dir, RunConfig(strategy="fedsa", lora=LORA))
    pulled = randomise(lm, 3)
    only_a = {layer: {n: t for n, t in named.items() if "lora_A" in n} for layer, named in pulled.items()}
    before = lm.layers()
    strategy.apply(2, {layer: {Role.CLUSTER: named} for layer, named in only_a.items()})
    for layer, named in lm.layers().items():
        for name, tensor in named.items():
            torch.testing.assert_close(tensor, only_a[layer][name] if "lora_A" in name else before[layer][name])
    update = strategy.update(UploadSpec((0,), lora_a=True, lora_b=False))
    assert list(update) == [0] and all("lora_A" in n for n in update[0])
    assert strategy.extra_param_groups() == [] and strategy.metrics() == {} and strategy.state() == ({}, {})


def test_ffa_freezes_a_at_the_seeded_init(tiny_model_dir: Path) -> None:
    lm, _ = prepared(tiny_model_dir, RunConfig(strategy="ffa", lora=LORA))
    for named in lm.params.values():
        for name, param in named.items():
            assert param.requires_grad == ("lora_B" in name), name


def fedalt_worker(model_dir: Path, run: RunConfig) -> tuple[LoraModel, FedALTWorker]:
    """A FedALT worker in mid-run: trained own adapter, a pulled rest of world, trained mixers."""
    lm, strategy = prepared(model_dir, run)
    assert isinstance(strategy, FedALTWorker)
    lm.load_layers(randomise(lm, 0))
    strategy.apply(3, {layer: {Role.EXTERNAL: named} for layer, named in randomise(lm, 1).items()})
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for mixer in strategy.mixer.mixers.values():
            mixer.weight.copy_(torch.randn(mixer.weight.shape, generator=gen))
            mixer.bias.copy_(torch.randn(mixer.bias.shape, generator=gen))
        for p in lm.head_parameters():
            p.add_(0.1)
    return lm, strategy


def test_fedalt_mixers_train_with_the_own_adapter_and_never_travel(tiny_model_dir: Path) -> None:
    lm, strategy = fedalt_worker(tiny_model_dir, RunConfig(strategy="fedalt", lora=LORA))
    trainable = {id(p) for p in lm.model.parameters() if p.requires_grad}
    assert all(id(p) in trainable for p in strategy.mixer.mixers.parameters())
    assert not any(id(p) in trainable for named in strategy.mixer.external.values() for p in named.values())
    update = strategy.update(UploadSpec(tuple(lm.params)))
    assert update.keys() == lm.params.keys() and all(u.keys() == lm.params[k].keys() for k, u in update.items())


def test_fedalt_restart_keeps_its_mixers_and_rest_of_world(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = RunConfig(strategy="fedalt", lora=LORA)
    lm, strategy = fedalt_worker(tiny_model_dir, run)
    expected = logits(lm.model, lm)
    save_checkpoint(tmp_path, lm, strategy, run, list(LABELS), tiny_model_dir, round=3)
    fresh, again = prepared(tiny_model_dir, run)  # a restarted worker: a new process, the same run
    assert isinstance(again, FedALTWorker)
    assert resume(fresh, again, tmp_path, run) == 3
    before, after = strategy.mixer.mixer_state(), again.mixer.mixer_state()
    assert before.keys() == after.keys() and len(before) == 2 * len(strategy.mixer.lora_modules())
    for key, tensor in before.items():
        assert torch.equal(after[key], tensor), key
    torch.testing.assert_close(logits(fresh.model, fresh), expected)
    restored = load_checkpoint(tmp_path)  # `python -m worker export` path
    assert isinstance(restored.strategy, FedALTWorker)
    torch.testing.assert_close(logits(restored.lm.model, restored.lm), expected)


def test_fedalt_export_carries_the_mixers_and_reloads_as_the_workers_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = RunConfig(strategy="fedalt", lora=LORA)
    lm, strategy = fedalt_worker(tiny_model_dir, run)
    expected = logits(lm.model, lm)
    out = export_adapter(lm, strategy, tiny_model_dir, len(LABELS), LORA, tmp_path / "adapter")
    mixers = load_file(str(out / MIXERS_FILE))
    for key, tensor in strategy.mixer.mixer_state().items():
        assert torch.equal(mixers[key], tensor), key
    assert (out / REST_OF_WORLD / "adapter_config.json").exists()
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=len(LABELS), ignore_mismatched_sizes=True
    )
    reloaded = PeftModel.from_pretrained(base, str(out))
    assert reloaded.peft_config["default"].r == LORA.rank  # the own LoRA, as PEFT loads any adapter
    load_exported(reloaded, out)
    torch.testing.assert_close(logits(reloaded, lm), expected, rtol=1e-4, atol=1e-5)


def test_a_fedtree_checkpoint_of_the_earlier_layout_still_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Keys own/, external/, theta/, head/ and metadata mixed / pinned, as written before the
    worker strategies existed, restore the mixed model."""
    run = RunConfig(strategy="fedtree", lora=LORA)
    lm = build_model(tiny_model_dir, LABELS, LORA, seed=0, train_head=True)
    own, external = randomise(lm, 5), randomise(lm, 6)
    tensors = {f"own/{layer}/{n}": t for layer, named in own.items() for n, t in named.items()}
    tensors |= {f"external/{layer}/{n}": t for layer, named in external.items() for n, t in named.items()}
    tensors |= {f"theta/{layer}": torch.tensor([0.3 * (layer + 1)]) for layer in lm.params}
    tensors |= {f"head/{n}": t + 0.2 for n, t in lm.head_state().items()}
    meta = {
        "run": run.model_dump(mode="json"),
        "labels": list(LABELS),
        "label_keys": list(LABELS),
        "model_path": str(tiny_model_dir),
        "round": 7,
        "mixed": True,
        "pinned": [0],
    }
    save_file(tensors, str(tmp_path / FILE), metadata={"fedtree": json.dumps(meta)})
    restored = load_checkpoint(tmp_path)
    mixed = restored.strategy.mixed  # type: ignore[attr-defined]
    assert restored.round == 7 and mixed is not None and mixed.pinned == {0}
    assert mixed.lam_value(0) == 1.0 and abs(mixed.lam_value(1) - float(torch.sigmoid(torch.tensor(0.6)))) < 1e-6
    for layer, named in external.items():
        for name, tensor in named.items():
            torch.testing.assert_close(mixed.external[layer][name].detach(), tensor)
            torch.testing.assert_close(restored.lm.params[layer][name].detach(), own[layer][name])
    for name, tensor in restored.lm.head_state().items():
        torch.testing.assert_close(tensor, tensors[f"head/{name}"])


def test_a_fedtree_late_joiner_trains_its_own_adapter_until_the_first_cluster_expert(tiny_model_dir: Path) -> None:
    """The coordinator sends a late joiner nothing while it warms up and is placed, whatever the
    round number: it stays plain LoRA, then switches to the mix with the first cluster expert; a
    round without downloads after that leaves the mix alone."""
    run = RunConfig.model_validate({"strategy": "fedtree", "lora": LORA.model_dump(), "fedtree": {"warmup_rounds": 2}})
    lm, strategy = prepared(tiny_model_dir, run)
    lm.load_layers(randomise(lm, 4))  # what it trained so far
    own = lm.layers()
    strategy.apply(7, {})  # round 7 > warmup, nothing pulled: its own warmup
    assert strategy.mixed is None and strategy.metrics() == {}  # type: ignore[attr-defined]
    for layer, named in lm.layers().items():
        for name, tensor in named.items():
            torch.testing.assert_close(tensor, own[layer][name])
    cluster, external = randomise(lm, 5), randomise(lm, 6)
    strategy.apply(9, {layer: {Role.CLUSTER: cluster[layer], Role.EXTERNAL: external[layer]} for layer in cluster})
    mixed = strategy.mixed  # type: ignore[attr-defined]
    assert mixed is not None and not mixed.pinned
    strategy.apply(10, {})
    assert strategy.mixed is mixed and not mixed.pinned  # type: ignore[attr-defined]
    for layer, named in external.items():
        for name, tensor in named.items():
            torch.testing.assert_close(mixed.external[layer][name].detach(), tensor)
