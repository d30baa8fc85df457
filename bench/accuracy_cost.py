"""The accuracy benchmark's cost model: steps, evaluations and model builds, timed now on one thread."""

from __future__ import annotations

import os
import time

from bench.accuracy_presets import Federation, Preset

# -- cost model ---------------------------------------------------------------------------------
# Wall time of a run over the compute estimate on this 2-core machine (12 worker threads contending
# for the GIL and the cores, the coordinator, tokenisation): measured on the `full` run of 2026-12-02.
CONTENTION = 1.9


def step_seconds(preset: Preset) -> tuple[float, float, float]:
    """Measured seconds of one training step, one evaluation batch of 64 and one worker's model
    build (load, peft wrap, fingerprint), each on one torch thread."""
    import torch

    from common.config import LoraConfig
    from worker.model import build_model, default_model_path

    if preset.task == "causal_lm":
        return 1.0, 1.0, 1.0  # not calibrated: generation presets print their own timing
    t = time.perf_counter()
    lm = build_model(default_model_path(), ("a/0", "a/1", "a/2", "a/3"), LoraConfig(), 0, True)
    build = time.perf_counter() - t
    enc = lm.tokenizer(
        ["word " * 200] * preset.batch_size, truncation=True, max_length=preset.max_seq_length, return_tensors="pt"
    )
    enc["labels"] = torch.zeros(preset.batch_size, dtype=torch.long)
    opt = torch.optim.AdamW([p for p in lm.model.parameters() if p.requires_grad], lr=1e-4)
    timings = []
    for _ in range(4):
        t = time.perf_counter()
        lm.model(**enc).loss.backward()
        opt.step()
        opt.zero_grad()
        timings.append(time.perf_counter() - t)
    ev = lm.tokenizer(["word " * 200] * 64, truncation=True, max_length=preset.max_seq_length, return_tensors="pt")
    t = time.perf_counter()
    with torch.no_grad():
        lm.model(**ev)
    return min(timings[1:]), time.perf_counter() - t, build


def cost_model(preset: Preset, runs: list[tuple[Federation, int, str]]) -> str:
    step, ev, build = step_seconds(preset)
    cores = os.cpu_count() or 1
    steps = sum(f.n_clients * preset.rounds * preset.steps_per_round for f, _, _ in runs)
    evals = sum(f.n_clients * preset.rounds * preset.val_size for f, _, _ in runs) / 64
    builds = sum(f.n_clients for f, _, _ in runs)
    cpu = steps * step * 1.15 + evals * ev + builds * build  # +15 %: the mixed/two-adapter methods' extra work
    return (
        f"cost model: {len(runs)} runs; {preset.rounds} rounds x {preset.steps_per_round} local steps "
        f"({preset.local_epochs if not preset.local_steps else '-'} epochs over {preset.train_size} examples, batch "
        f"{preset.batch_size}, {preset.max_seq_length} tokens) per client; {steps} training steps at {step:.3f} s, "
        f"{evals:.0f} evaluation batches of 64 at {ev:.3f} s, {builds} model builds at {build:.1f} s (measured now, one "
        f"thread) -> ~{cpu / 60:.0f} CPU-min; expect ~{cpu / 60 / cores * CONTENTION:.0f} min on {cores} cores "
        f"(x{CONTENTION} contention measured here)"
    )
