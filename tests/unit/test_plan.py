"""`fedtree-worker --plan`: adapter size and memory estimates from config.json alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from common.config import LoraConfig, RunConfig, WorkerConfig
from worker.model import build_model
from worker.plan import estimate, load_run_config, model_shape, plan

# Llama-3-8B's shape: planned on the meta device, no weights anywhere
LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}


@pytest.fixture
def llama_8b_config(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_8B))
    return tmp_path


def test_plans_an_8b_model_from_its_config_alone(llama_8b_config: Path) -> None:
    shape = model_shape(llama_8b_config, "causal_lm", ("q_proj", "v_proj"), rank=16)
    assert 8.0e9 < shape.params < 8.1e9 and shape.layers == 32
    assert shape.lora_modules == 64
    assert shape.lora_params == 32 * 16 * ((4096 + 4096) + (4096 + 1024))  # q: 4096 -> 4096, v: 4096 -> 8 x 128
    peaks = {
        (p, q): estimate(shape, p, q, 4, 512, "causal_lm", False)
        for p, q in [("fp32", "none"), ("bf16", "none"), ("bf16", "8bit"), ("bf16", "4bit")]
    }
    weights = [peaks[k].weights for k in [("fp32", "none"), ("bf16", "none"), ("bf16", "8bit"), ("bf16", "4bit")]]
    assert weights == sorted(weights, reverse=True)
    assert peaks["bf16", "none"].weights == 2 * shape.params  # 2 bytes per parameter
    assert 5 << 30 < peaks["bf16", "4bit"].weights < 6 << 30  # QLoRA: ~0.5 byte per linear weight
    m = peaks["bf16", "none"]
    assert m.activations_checkpointed < m.activations and m.trainable == shape.lora_params * 16


@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_adapter_size_matches_the_built_model(task: str, tiny_model_dir: Path, tiny_llama_dir: Path) -> None:
    model_dir, targets = (
        (tiny_model_dir, ("query", "value")) if task == "classification" else (tiny_llama_dir, ("q_proj", "v_proj"))
    )
    lora = LoraConfig(rank=4, alpha=8.0, target_modules=targets)
    lm = build_model(model_dir, ("a", "b"), lora, 0, True, task)
    built = sum(p.numel() for named in lm.params.values() for p in named.values())
    shape = model_shape(model_dir, task, targets, rank=4)
    assert shape.lora_params == built and shape.lora_modules == sum(len(n) for n in lm.params.values()) // 2
    assert shape.params == sum(p.numel() for n, p in lm.model.named_parameters() if "lora_" not in n)


def test_cli_plan(llama_8b_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from worker.__main__ import main

    coordinator = tmp_path / "coordinator.yaml"
    coordinator.write_text(yaml.safe_dump({"run": {"task": "causal_lm", "lora": {"rank": 16}, "wire_dtype": "bf16"}}))
    worker = tmp_path / "worker.yaml"
    worker.write_text(
        yaml.safe_dump({"model_path": str(llama_8b_config), "precision": "bf16", "train": {"gradient_checkpointing": True}})
    )
    assert main(["--plan", "--config", str(worker), "--run-config", str(coordinator)]) == 0
    out = capsys.readouterr().out
    assert "8.03 B parameters" in out and "rank 16 on q_proj, v_proj: 64 modules" in out
    assert "as bf16" in out and "gradient checkpointing on" in out
    assert "* bf16      none" in out and "bf16      4bit" in out
    coordinator.write_text(yaml.safe_dump({"run": {"task": "causal_lm", "lora": {"target_modules": ["nope"]}}}))
    assert main(["--plan", "--config", str(worker), "--run-config", str(coordinator)]) == 2
    assert "matched no module" in capsys.readouterr().err


def test_run_config_file(tmp_path: Path) -> None:
    bare = tmp_path / "run.yaml"
    bare.write_text(yaml.safe_dump({"lora": {"rank": 4}}))
    assert load_run_config(bare).lora.rank == 4
    assert load_run_config(None) == RunConfig()
    text = plan(WorkerConfig(), RunConfig(lora=LoraConfig(rank=2)), _minimal_bert(tmp_path))
    assert "classification" in text and "LoRA        rank 2 on query, value" in text


def _minimal_bert(tmp_path: Path) -> Path:
    path = tmp_path / "bert"
    path.mkdir()
    config = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    (path / "config.json").write_text(json.dumps(config))
    return path
