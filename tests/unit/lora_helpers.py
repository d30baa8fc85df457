"""Shared by the export tests: random adapters and the logits a model gives a few fixed texts."""

from __future__ import annotations

import torch

from common.config import FedTreeConfig, LoraConfig, RunConfig
from worker.mixed import MixedExperts
from worker.model import LoraModel
from worker.strategies.fedtree import FedTreeWorker

LORA = LoraConfig(rank=4, alpha=8.0)
TEXTS = ["the match ended with a late goal", "new chips make phones faster", "bake the bread with spice"]
Layers = dict[int, dict[str, torch.Tensor]]


def randomise(lm: LoraModel, seed: int) -> Layers:
    gen = torch.Generator().manual_seed(seed)
    return {layer: {n: torch.randn(p.shape, generator=gen) * 0.3 for n, p in named.items()} for layer, named in lm.params.items()}


def logits(model: torch.nn.Module, lm: LoraModel) -> torch.Tensor:
    model.eval()
    enc = lm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def fedtree_worker(lm: LoraModel, mixed: MixedExperts | None, run: RunConfig | None = None) -> FedTreeWorker:
    """The fedtree worker strategy of `lm` holding a mixed model built by hand (None: warmup)."""
    strategy = FedTreeWorker(run or RunConfig(strategy="fedtree", lora=LORA, fedtree=FedTreeConfig(personal=False)))
    strategy.prepare(lm)
    strategy.mixed = mixed
    return strategy
