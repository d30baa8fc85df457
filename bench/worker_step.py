"""Worker step benchmark: one training step of MiniLM with plain peft LoRA vs fedtree's mixed experts.

A step is what `worker.train.train_local` does per batch: forward + backward + AdamW step +
zero_grad, with the optimiser groups the worker uses. Variants, each its own model on the same
batch (same texts, same tokenisation):

- peft:   plain peft LoRA (warmup rounds, and fedit/ffa/... workers).
- mixed:  fedtree after warmup: worker.mixed.MixedExperts (cluster + frozen external adapter,
          lam = sigmoid(theta) per layer through forward hooks), every layer unpinned, theta in its
          own optimiser group.
- fedalt: worker.fedalt.RestOfWorldMixer (own + rest-of-world adapter, per-token linear mixer).
- mixed-on-B: `mixed` with lam applied to lora_B's output (N x out_features) instead of lora_A's
          (N x r), as worker/mixed.py did before this benchmark: the before/after of that change.

Repetitions are interleaved (a random variant order per repetition) so drifts of a shared machine
hit every variant alike; we report median and p90 per variant and the ratio of medians to peft.

    python bench/worker_step.py            # 200 interleaved repetitions
    python bench/worker_step.py --quick    # 30
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from common.chunking import Role  # noqa: E402
from common.config import LoraConfig, TrainConfig  # noqa: E402
from worker.data.partition import partition_federation  # noqa: E402
from worker.fedalt import RestOfWorldMixer  # noqa: E402
from worker.mixed import EXTERNAL, MixedExperts  # noqa: E402
from worker.model import LoraModel, build_model, default_model_path  # noqa: E402
from worker.train import trainable_parameters  # noqa: E402

TARGET = 1.10  # mixed step <= 10% slower than plain peft


def random_layers(lm: LoraModel, seed: int) -> dict[int, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        layer: {n: torch.randn(p.shape, generator=gen) * 0.05 for n, p in named.items()} for layer, named in lm.params.items()
    }


def make_step(
    lm: LoraModel, batch: dict[str, torch.Tensor], cfg: TrainConfig, extra: list[tuple[list[torch.nn.Parameter], float]]
) -> Callable[[], float]:
    """A closure doing one step exactly as train_local does it; returns the loss."""
    special = {id(p) for params, _ in extra for p in params}
    groups: list[dict[str, object]] = [
        {"params": [p for p in trainable_parameters(lm) if id(p) not in special], "lr": cfg.learning_rate}
    ]
    groups += [{"params": params, "lr": lr, "weight_decay": 0.0} for params, lr in extra]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    lm.model.train()

    def step() -> float:
        out = lm.model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    return step


def build_variants(args: argparse.Namespace, cfg: TrainConfig) -> tuple[dict[str, Callable[[], float]], dict[str, torch.Tensor]]:
    lora = LoraConfig()
    model_path = Path(args.model_path) if args.model_path else default_model_path()
    part = partition_federation([args.task], 1, args.batch_size, 1, alpha=None, seed=0)[0]
    label_ids = {label: i for i, label in enumerate(part.labels)}
    variants: dict[str, Callable[[], float]] = {}
    batch: dict[str, torch.Tensor] = {}
    for name in args.variants:
        lm = build_model(model_path, part.labels, lora, seed=0, train_head=True)
        lm.load_layers(random_layers(lm, 1))  # a trained-looking cluster/own adapter (B != 0)
        if not batch:
            enc = lm.tokenizer(
                [e.text for e in part.train], padding=True, truncation=True, max_length=cfg.max_seq_length, return_tensors="pt"
            )
            batch = {**dict(enc), "labels": torch.tensor([label_ids[e.label] for e in part.train])}
        extra: list[tuple[list[torch.nn.Parameter], float]] = []
        if name in ("mixed", "mixed-on-B"):
            mixed = MixedExperts(lm, lora)
            external = random_layers(lm, 2)
            mixed.load({layer: {Role.CLUSTER: lm.layers()[layer], Role.EXTERNAL: external[layer]} for layer in lm.params})
            assert not mixed.pinned, "every layer mixes two experts"
            extra = [(mixed.theta_parameters(), 1e-2)]
            if name == "mixed-on-B":
                hooks_on_b(mixed)
        elif name == "fedalt":
            alt = RestOfWorldMixer(lm, lora)
            external = random_layers(lm, 2)
            alt.load({layer: {Role.EXTERNAL: external[layer]} for layer in lm.params})
        elif name != "peft":
            raise SystemExit(f"unknown variant {name}")
        variants[name] = make_step(lm, batch, cfg, extra)
    return variants, batch


def hooks_on_b(mixed: MixedExperts) -> None:
    """Move the lam hooks from lora_A to lora_B (the previous implementation)."""
    for hook in mixed._hooks:
        hook.remove()
    mixed._hooks = []
    for layer, _, module in mixed.lora_modules():
        mixed._hooks.append(module.lora_B["default"].register_forward_hook(mixed._scale(layer, cluster=True)))
        mixed._hooks.append(module.lora_B[EXTERNAL].register_forward_hook(mixed._scale(layer, cluster=False)))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30 repetitions instead of --reps")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the benchmarks' workers use 1)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--task", default="bbc_news", help="corpus of the batch (bbc_news texts fill max-seq-length)")
    parser.add_argument("--variants", default="peft,mixed,mixed-on-B,fedalt", type=lambda s: s.split(","))
    parser.add_argument("--model-path", default=None)
    args = parser.parse_args(argv)
    reps = 30 if args.quick else args.reps
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TrainConfig(batch_size=args.batch_size, max_seq_length=args.max_seq_length, learning_rate=5e-4)
    variants, batch = build_variants(args, cfg)
    tokens = tuple(batch["input_ids"].shape)
    for step in variants.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    rng = random.Random(0)
    started = time.monotonic()
    for _ in range(reps):
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    wall = time.monotonic() - started
    base = statistics.median(times["peft"]) if "peft" in times else None
    print(
        f"worker step benchmark: MiniLM-L6 + LoRA r=8 on query/value, batch {tokens[0]} x {tokens[1]} tokens ({args.task}), "
        f"forward + backward + AdamW step; {reps} interleaved repetitions after {args.warmup} warmup steps; "
        f"torch threads {args.threads}; {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"wall {wall:.0f} s\n"
    )
    print("| variant | median ms | p90 ms | ratio of medians vs peft | median of paired ratios |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        ratio = f"{statistics.median(ts) / base:.3f}" if base else "-"
        paired = f"{statistics.median(a / b for a, b in zip(ts, times['peft'], strict=True)):.3f}" if base else "-"
        print(f"| {name} | {1e3 * statistics.median(ts):.1f} | {1e3 * pct(ts, 0.9):.1f} | {ratio} | {paired} |")
    if base and "mixed" in times:
        ratio = statistics.median(times["mixed"]) / base
        verdict = "met" if ratio <= TARGET else f"missed by {100 * (ratio - TARGET):.1f} points"
        print(f"\ntarget mixed <= {TARGET:.2f} x peft: {ratio:.3f} ({verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
