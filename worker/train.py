"""Local training (every task type) and evaluation of a worker's classifier (LoRA + optionally its head)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from tqdm import tqdm

from common.config import TrainConfig
from common.retry import Stopped
from worker.data import Example
from worker.model import LoraModel

log = logging.getLogger(__name__)


T = TypeVar("T")


def _batches(examples: Sequence[T], order: Sequence[int], batch_size: int) -> Iterator[list[T]]:
    for start in range(0, len(order), batch_size):
        yield [examples[i] for i in order[start : start + batch_size]]


def _encode(lm: LoraModel, batch: list[Example], label_ids: dict[str, int], max_len: int) -> dict[str, torch.Tensor]:
    enc = lm.tokenizer([e.text for e in batch], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    enc["labels"] = torch.tensor([label_ids[e.label] for e in batch], dtype=torch.long)
    return dict(enc)


def trainable_parameters(lm: LoraModel) -> list[torch.nn.Parameter]:
    return [p for p in lm.model.parameters() if p.requires_grad]


def train_local(
    lm: LoraModel,
    examples: Sequence[Example],
    label_ids: dict[str, int],
    cfg: TrainConfig,
    seed: int,
    desc: str = "train",
    progress: bool = True,
    extra_groups: Sequence[tuple[list[torch.nn.Parameter], float]] = (),
    stop: threading.Event | None = None,
) -> dict[str, float]:
    """Train the classifier for `cfg.local_steps` steps, or `cfg.local_epochs` epochs; return mean loss and steps.

    `extra_groups` are (parameters, learning rate) pairs trained in their own optimiser groups."""
    return optimise(
        lm,
        examples,
        lambda batch: _encode(lm, batch, label_ids, cfg.max_seq_length),
        cfg,
        seed,
        desc,
        progress,
        extra_groups,
        stop,
    )


def optimise(
    lm: LoraModel,
    examples: Sequence[Any],
    encode: Callable[[list[Any]], dict[str, torch.Tensor]],
    cfg: TrainConfig,
    seed: int,
    desc: str = "train",
    progress: bool = True,
    extra_groups: Sequence[tuple[list[torch.nn.Parameter], float]] = (),
    stop: threading.Event | None = None,
) -> dict[str, float]:
    """The local optimisation loop of every task type: seeded shuffles, `encode(batch)` -> model
    inputs with labels, AdamW on the trainable parameters (+ `extra_groups` at their own rates).

    One optimiser step sums the gradients of `cfg.gradient_accumulation_steps` consecutive
    micro-batches of `cfg.batch_size`, each loss weighted by its share of the step's examples: the
    step is the large batch's (batch_size x steps examples, the same examples in the same order),
    with the memory of one micro-batch. The forward pass runs on `lm.hardware`'s device under its
    autocast; fp16 scales the loss. A set `stop` (the worker's SIGTERM) ends it before the next
    step with common.retry.Stopped."""
    if not examples:
        raise ValueError("no training examples")
    hw = lm.hardware
    gen = torch.Generator().manual_seed(seed)
    accumulate = cfg.gradient_accumulation_steps
    step_size = cfg.batch_size * accumulate
    steps_per_epoch = math.ceil(len(examples) / step_size)
    total = cfg.local_steps if cfg.local_steps > 0 else cfg.local_epochs * steps_per_epoch
    special = {id(p) for params, _ in extra_groups for p in params}
    groups: list[dict[str, object]] = [
        {"params": [p for p in trainable_parameters(lm) if id(p) not in special], "lr": cfg.learning_rate}
    ]
    # e.g. FedTreeLoRA's theta: its own learning rate, no weight decay (it is a logit, not a weight)
    groups += [{"params": params, "lr": lr, "weight_decay": 0.0} for params, lr in extra_groups]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scaler = hw.grad_scaler()
    lm.model.train()
    losses: list[float] = []
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    while len(losses) < total:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for step in _batches(examples, order, step_size):
            if stop is not None and stop.is_set():
                bar.close()
                raise Stopped(f"stopped during local training, after {len(losses)} of {total} steps")
            loss = 0.0
            for micro in _batches(step, range(len(step)), cfg.batch_size):
                with hw.autocast():
                    out = lm.model(**hw.to_device(encode(micro)))
                share = len(micro) / len(step)
                scaler.scale(out.loss * share).backward()
                loss += float(out.loss.detach()) * share
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if len(losses) >= total:
                break
    bar.close()
    return {"train_loss": sum(losses) / max(len(losses), 1), "train_steps": float(len(losses))}


@torch.no_grad()
def evaluate(
    lm: LoraModel, examples: Sequence[Example], label_ids: dict[str, int], cfg: TrainConfig, batch_size: int = 64
) -> dict[str, float]:
    """Accuracy and mean loss on a validation split."""
    if not examples:
        return {}
    lm.model.eval()
    correct, loss_sum = 0, 0.0
    for batch in _batches(examples, range(len(examples)), batch_size):
        enc = lm.hardware.to_device(_encode(lm, batch, label_ids, cfg.max_seq_length))
        with lm.hardware.autocast():
            out = lm.model(**enc)
        correct += int((out.logits.argmax(-1) == enc["labels"]).sum())
        loss_sum += float(out.loss) * len(batch)
    return {"accuracy": correct / len(examples), "loss": loss_sum / len(examples)}
