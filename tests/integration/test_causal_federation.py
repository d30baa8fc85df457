"""causal_lm end to end: a real coordinator, 4 in-process workers on a tiny llama, 2 rounds, every
strategy (~1 s each), with closer checks for fedit and fedtree."""

from __future__ import annotations

import pytest
import torch
from test_federation import _run_all, _worker
from tinyllama import write_prompt_data

from common.exit_codes import ExitCode
from coordinator.strategies import STRATEGIES

TRAIN = {"local_steps": 2, "batch_size": 4, "max_seq_length": 24, "learning_rate": 3e-2}
GENERATION = {"max_new_tokens": 4, "num_beams": 1}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_causal_lm_federation_two_rounds(strategy, coordinator_factory, tiny_llama_dir, tmp_path):
    coord = coordinator_factory(
        strategy=strategy,
        task="causal_lm",
        rounds=2,
        min_workers=4,
        train=TRAIN,
        generation=GENERATION,
        fedtree={"warmup_rounds": 1},
    )
    data = [write_prompt_data(tmp_path / f"d{i}", n_train=8, n_val=4, seed=i, reverse=i >= 2) for i in range(4)]
    workers = [_worker(coord, tiny_llama_dir, data[i], tmp_path / f"o{i}", f"g{i}") for i in range(4)]
    assert _run_all(workers) == [ExitCode.OK] * 4

    engine = coord.engine
    assert engine.done and engine.last_closed == 2
    assert engine.run.lora.target_modules == ("q_proj", "v_proj")  # the causal_lm default
    evals = engine.store.evaluations()
    assert sorted(evals) == [1, 2]
    for metrics in evals[2].values():
        assert {"rouge1", "rouge2", "rougeL", "loss"} <= set(metrics) and "accuracy" not in metrics
        assert 0.0 <= metrics["rouge1"] <= 1.0
    lm = workers[0].lm
    assert lm is not None and sorted(lm.params[0]) == [
        "self_attn.q_proj.lora_A.weight",
        "self_attn.q_proj.lora_B.weight",
        "self_attn.v_proj.lora_A.weight",
        "self_attn.v_proj.lora_B.weight",
    ]
    assert any(float(t.abs().sum()) > 0 for n, t in lm.layers()[1].items() if "lora_B" in n), "B moved from zero"
    if strategy == "fedit":
        a, b = workers[0].lm.layers(), workers[3].lm.layers()  # type: ignore[union-attr]
        assert all(torch.equal(a[1][n], b[1][n]) for n in a[1]), "one global adapter after the final pull"
    elif strategy == "fedtree":
        assert engine.strategy.assignment, "the tree was built from the llama B matrices after warmup"
        assert workers[0].strategy.mixed is not None, "round 2 trained FedTreeLoRA's mixed experts on q_proj/v_proj"
        _check_export_reproduces_logits(workers[0], tiny_llama_dir, tmp_path)


def _check_export_reproduces_logits(worker, tiny_llama_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The exported PEFT adapter (rank 2r mix of cluster and external experts) on the base model
    gives the worker's own logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "o0" / "adapter"
    assert (adapter / "adapter_config.json").exists()
    ids = torch.tensor([[5, 17, 40, 99, 3]])
    worker.lm.model.eval()
    with torch.no_grad():
        want = worker.lm.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        got = PeftModel.from_pretrained(base, adapter).eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
