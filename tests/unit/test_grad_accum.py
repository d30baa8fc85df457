"""Gradient accumulation: k micro-batches of b make the same optimiser step as one batch of k x b,
and the knob travels to every worker in the run spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.config import LoraConfig, RunConfig, TrainConfig
from common.serde import run_from_proto, run_to_proto
from worker.data import Example
from worker.model import build_model
from worker.train import train_local

LORA = LoraConfig(rank=2, alpha=4.0, target_modules=("query", "value"))
KEYS = ("t/a", "t/b", "t/c")
IDS = {"a": 0, "b": 1, "c": 2}
# texts of different lengths: micro-batches pad differently from the large batch
EXAMPLES = [Example(" ".join(["word"] * (1 + i % 5)) + f" sample {i}", "abc"[i % 3]) for i in range(10)]


def _train(
    model_dir: Path, cfg: TrainConfig
) -> tuple[dict[int, dict[str, torch.Tensor]], dict[str, torch.Tensor], dict[str, float]]:
    lm = build_model(model_dir, KEYS, LORA, 0, True)
    metrics = train_local(lm, EXAMPLES, IDS, cfg, seed=5, progress=False)
    return lm.layers(), lm.head_state(), metrics


@pytest.mark.parametrize(("micro", "steps"), [(4, 2), (2, 4), (3, 3)])
def test_accumulated_micro_batches_make_the_large_batch_step(tiny_model_dir_no_dropout: Path, micro: int, steps: int) -> None:
    """One epoch over 10 examples: large batches of micro x steps (the last one shorter) against
    the same examples split into micro-batches; adapter, head and loss agree."""
    common = {"local_epochs": 1, "max_seq_length": 16, "learning_rate": 1e-2}
    large = _train(tiny_model_dir_no_dropout, TrainConfig(batch_size=micro * steps, **common))
    accumulated = _train(tiny_model_dir_no_dropout, TrainConfig(batch_size=micro, gradient_accumulation_steps=steps, **common))
    assert accumulated[2]["train_steps"] == large[2]["train_steps"] == -(-len(EXAMPLES) // (micro * steps))
    assert accumulated[2]["train_loss"] == pytest.approx(large[2]["train_loss"], rel=1e-4)
    for layer, named in large[0].items():
        for name, tensor in named.items():
            assert tensor.abs().sum() > 0
            torch.testing.assert_close(accumulated[0][layer][name], tensor, atol=1e-5, rtol=1e-4)
    for name, tensor in large[1].items():
        torch.testing.assert_close(accumulated[1][name], tensor, atol=1e-5, rtol=1e-4)


def test_local_steps_count_optimiser_steps(tiny_model_dir_no_dropout: Path) -> None:
    cfg = TrainConfig(local_steps=3, batch_size=2, gradient_accumulation_steps=2, max_seq_length=16)
    assert _train(tiny_model_dir_no_dropout, cfg)[2]["train_steps"] == 3


def test_accumulation_travels_in_the_run_spec() -> None:
    run = RunConfig(train=TrainConfig(batch_size=4, gradient_accumulation_steps=8))
    assert run_from_proto(run_to_proto("r", run))[1] == run
    old = run_to_proto("r", RunConfig())
    old.train.ClearField("gradient_accumulation_steps")  # a coordinator from before the knob
    assert run_from_proto(old)[1].train.gradient_accumulation_steps == 1
    with pytest.raises(ValueError):
        TrainConfig(gradient_accumulation_steps=0)


def test_a_set_stop_ends_training_before_the_next_step(tiny_model_dir_no_dropout: Path) -> None:
    """The worker's SIGTERM sets its stop event: local training ends at the next step, not the round's end."""
    import threading

    from common.retry import Stopped

    lm = build_model(tiny_model_dir_no_dropout, KEYS, LORA, 0, True)
    before = {k: t.clone() for k, t in lm.layers()[0].items()}
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped, match="after 0 of 100 steps"):
        train_local(lm, EXAMPLES, IDS, TrainConfig(local_steps=100, batch_size=2), seed=5, progress=False, stop=stop)
    assert all(torch.equal(t, before[k]) for k, t in lm.layers()[0].items())
