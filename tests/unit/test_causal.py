"""causal_lm pieces on a tiny llama: loss masking, generation + ROUGE, task scoring, config, data, tree padding."""

from __future__ import annotations

import json

import pytest
import torch
from tinyllama import write_prompt_data

from common.config import DataConfig, GenerationConfig, RunConfig
from common.serde import run_from_proto, run_to_proto
from coordinator.tree.distances import layer_distances, stack_b
from worker.causal import IGNORE, encode_train, evaluate_causal, format_prompt, generate, train_causal
from worker.data.prompts import PromptExample
from worker.generation import rouge, task_score
from worker.local_data import LocalData, PromptData, load_any_data
from worker.model import build_model


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def _ids(tok, text: str) -> list[int]:  # type: ignore[no-untyped-def]
    return list(tok(text, add_special_tokens=False)["input_ids"])


def test_prompt_tokens_and_padding_are_ignored_by_the_loss(tokenizer, tiny_llama_dir) -> None:
    batch = [PromptExample("copy: cat dog", "cat dog"), PromptExample("copy: one two three four", "one")]
    enc = encode_train(tokenizer, batch, max_len=64)
    for i, ex in enumerate(batch):
        prompt = _ids(tokenizer, format_prompt(tokenizer, ex.prompt))
        response = _ids(tokenizer, ex.response) + [tokenizer.eos_token_id]
        n, m = len(prompt), len(response)
        assert enc["input_ids"][i, : n + m].tolist() == prompt + response
        assert enc["labels"][i, :n].tolist() == [IGNORE] * n  # prompt: no loss
        assert enc["labels"][i, n : n + m].tolist() == response  # response + EOS: loss
        assert enc["labels"][i, n + m :].tolist() == [IGNORE] * (enc["labels"].shape[1] - n - m)  # padding
        assert enc["attention_mask"][i].sum() == n + m
    # the model's loss is the mean cross-entropy over response tokens only
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(**enc)
    logits, labels = out.logits[:, :-1], enc["labels"][:, 1:]
    keep = labels != IGNORE
    manual = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    everything = torch.nn.functional.cross_entropy(
        logits[enc["attention_mask"][:, 1:] == 1], enc["input_ids"][:, 1:][enc["attention_mask"][:, 1:] == 1]
    )
    torch.testing.assert_close(out.loss, manual)
    assert not torch.isclose(out.loss, everything)


def test_overlong_pairs_keep_the_response_and_the_end_of_the_prompt(tokenizer) -> None:
    ex = PromptExample("copy: " + " ".join(["cat dog sun moon"] * 20), "blue lake fish")
    enc = encode_train(tokenizer, [ex], max_len=16)
    response = _ids(tokenizer, ex.response) + [tokenizer.eos_token_id]
    assert enc["input_ids"].shape[1] == 16
    assert enc["labels"][0, -len(response) :].tolist() == response
    prompt = _ids(tokenizer, format_prompt(tokenizer, ex.prompt))
    assert enc["input_ids"][0, : 16 - len(response)].tolist() == prompt[-(16 - len(response)) :]


def test_generation_and_rouge_on_a_tiny_llama(tiny_llama_dir) -> None:
    """Before training the tiny llama says nothing useful (ROUGE ~0); after LoRA training on a
    constant answer it generates that answer (ROUGE 1), greedy and with beam search."""
    run = RunConfig(
        task="causal_lm",
        lora={"rank": 8, "alpha": 16},
        train={"local_steps": 30, "batch_size": 4, "learning_rate": 3e-2, "max_seq_length": 32, "weight_decay": 0.0},
    )
    lm = build_model(tiny_llama_dir, (), run.lora, seed=0, train_head=False, task="causal_lm")
    train = [PromptExample(f"copy: {w}", "blue moon") for w in "cat dog sun red tree lake fish bird".split()]
    val = [PromptExample("copy: one", "blue moon"), PromptExample("copy: six", "blue moon")]
    greedy = GenerationConfig(max_new_tokens=6, num_beams=1)
    before = evaluate_causal(lm, val, run.train, greedy)
    assert set(before) >= {"rouge1", "rouge2", "rougeL", "loss"} and "task_score" not in before
    assert before["rouge1"] < 0.5
    train_causal(lm, train, run.train, seed=0, progress=False)
    predictions = generate(lm, [e.prompt for e in val], greedy, max_len=32)
    assert predictions == ["blue moon", "blue moon"]
    after = evaluate_causal(lm, val, run.train, greedy)
    assert after["rouge1"] == after["rouge2"] == after["rougeL"] == 1.0 and after["loss"] < before["loss"]
    beams = evaluate_causal(lm, val, run.train, GenerationConfig(max_new_tokens=6, num_beams=3))
    assert beams["rouge1"] == 1.0


def test_rouge_values() -> None:
    got = rouge(["the cat sat", "a b c d", "nothing"], ["the cat sat on the mat", "d c b a", "x"])
    r1 = (2 * 3 / 9 + 1.0 + 0.0) / 3  # F1 of 3/3 precision, 3/6 recall; all 4 words; none
    r2 = (2 * (2 / 2) * (2 / 5) / (1 + 2 / 5) + 0.0 + 0.0) / 3
    assert got["rouge1"] == pytest.approx(r1) and got["rouge2"] == pytest.approx(r2)
    assert got["rougeL"] == pytest.approx((2 * 3 / 9 + 0.25 + 0.0) / 3)  # LCS of the reversed list is 1 word


def test_task_score_uses_reasoning_gyms_own_scorer(tmp_path) -> None:
    from worker.data.reasoning import reasoning_federation, write_prompt_partitions

    parts = reasoning_federation(["chain_sum", "syllogism"], clients_per_task=2, train_size=3, val_size=2, seed=0)
    assert [p.task for p in parts] == ["chain_sum"] * 2 + ["syllogism"] * 2
    assert parts[0].train != parts[1].train, "clients of one task draw their own examples"
    again = reasoning_federation(["chain_sum", "syllogism"], clients_per_task=2, train_size=3, val_size=2, seed=0)
    assert [p.train for p in again] == [p.train for p in parts], "deterministic"
    write_prompt_partitions(parts, tmp_path)
    meta = json.loads((tmp_path / "client-2" / "meta.json").read_text())
    assert meta["task_type"] == "causal_lm" and meta["task"] == "syllogism"
    data = load_any_data(DataConfig(dir=tmp_path / "client-0"))
    assert isinstance(data, PromptData) and len(data.train) == 3 and data.val[0].scorer == "chain_sum"
    assert task_score([e.response for e in data.val], data.val) == 1.0
    assert task_score(["not a number"] * 2, data.val) == 0.0
    assert task_score(["x"], [PromptExample("p", "r")]) is None


def test_data_kind_is_recognised(tmp_path, client_data) -> None:
    prompts = write_prompt_data(tmp_path / "p")
    (prompts / "meta.json").unlink()  # by content alone
    assert isinstance(load_any_data(DataConfig(dir=prompts)), PromptData)
    assert isinstance(load_any_data(DataConfig(dir=client_data("c"))), LocalData)
    renamed = tmp_path / "r.jsonl"
    renamed.write_text(json.dumps({"instruction": "copy: a", "output": "a"}) + "\n")
    cfg = DataConfig(train_path=renamed, prompt_field="instruction", response_field="output")
    assert load_any_data(cfg).train == [PromptExample("copy: a", "a")]  # type: ignore[comparison-overlap]


def test_causal_lm_run_config_defaults_and_wire_round_trip() -> None:
    assert RunConfig().lora.target_modules == ("query", "value")
    run = RunConfig(task="causal_lm", generation={"max_new_tokens": 7, "num_beams": 3})
    assert run.lora.target_modules == ("q_proj", "v_proj")  # left at the default -> llama attention projections
    assert RunConfig(task="causal_lm", lora={"target_modules": ["o_proj"]}).lora.target_modules == ("o_proj",)
    assert run_from_proto(run_to_proto("r", run)) == ("r", run)
    assert run_from_proto(run_to_proto("r", RunConfig()))[1].task == "classification"


def test_tree_distances_over_modules_of_different_sizes() -> None:
    """Grouped-query attention: v_proj's B is smaller than q_proj's; zero padding keeps distances exact."""
    g = torch.Generator().manual_seed(0)
    clients = [{0: {"q.lora_B": torch.randn(8, 2, generator=g), "v.lora_B": torch.randn(4, 2, generator=g)}} for _ in range(3)]
    Dl = layer_distances(stack_b(clients), metric="euclidean")[0]
    for i in range(3):
        for j in range(3):
            q = torch.dist(clients[i][0]["q.lora_B"], clients[j][0]["q.lora_B"])
            v = torch.dist(clients[i][0]["v.lora_B"], clients[j][0]["v.lora_B"])
            assert float(Dl[i, j]) == pytest.approx(float((q + v) / 2), abs=1e-5)


def test_admin_cli_leads_with_rouge1_for_generation_runs() -> None:
    from coordinator.admin_cli import render_rounds, render_workers
    from proto.fedtree.v1 import admin_pb2 as apb

    gen = apb.GetRoundsResponse(rounds=[apb.RoundInfo(round=1, mean_metrics={"rouge1": 0.25, "rougeL": 0.2, "task_score": 0.5})])
    text = render_rounds(gen)
    assert "mean rouge1" in text and "0.250" in text and "task_score=0.500" in text
    cls = apb.GetRoundsResponse(rounds=[apb.RoundInfo(round=1, mean_metrics={"accuracy": 0.75}, accuracy={"w0": 0.75})])
    assert "mean acc" in render_rounds(cls) and "w0=0.75" in render_rounds(cls)
    workers = apb.ListWorkersResponse(workers=[apb.WorkerInfo(worker_id="w0", last_metrics={"rouge1": 0.125})])
    assert "rouge1" in render_workers(workers) and "0.125" in render_workers(workers)
