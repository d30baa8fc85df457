"""Robust aggregation benchmark: one of 8 workers attacks, the honest 7 are scored.

8 clients (2 per task over 4 offline tasks), FedIT on MiniLM through the real coordinator and
the real `worker.runner.Worker` code (threads of this process talking gRPC on loopback, as in
bench/accuracy.py). Worker `client-7` is the attacker from round 1 on: it trains honestly but
pushes `reference + factor * (trained - reference)`, its round's update scaled x100 or
sign-flipped (factor -1), where the reference is what it pulled. We report the honest workers'
mean validation accuracy (after the last round and at their best round) with no attack, and
under each attack with `run.robust.method` = mean (no defence), clip, median, trimmed_mean.

    python bench/robust.py                 # the table in docs/BENCHMARKS.md (~15 min on 2 cores)
    python bench/robust.py --quick         # 2 rounds, tiny data: checks that it runs
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.simulation import loopback_worker, run_workers, start_coordinator  # noqa: E402
from common.config import DataConfig, RunConfig, WorkerConfig  # noqa: E402
from common.exit_codes import ExitCode  # noqa: E402
from common.schema import UploadSpec  # noqa: E402
from worker.client import Pulled  # noqa: E402
from worker.data.partition import partition_federation, write_partitions  # noqa: E402
from worker.runner import Worker  # noqa: E402

TASKS = ("wordnet_pos", "bbc_news", "fortunes", "tweet_sentiment")
ATTACKER = "client-7"


class Attacker(Worker):
    """A worker that trains like the others but pushes its update multiplied by `factor`."""

    def __init__(self, config: WorkerConfig, factor: float) -> None:
        super().__init__(config)
        self.factor = factor
        self.reference: dict[int, dict[str, torch.Tensor]] = {}

    def apply(self, round: int, pulled: Pulled) -> None:
        super().apply(round, pulled)
        assert self.lm is not None
        self.reference = self.lm.layers()

    def update_for(self, upload: UploadSpec) -> dict[int, dict[str, torch.Tensor]]:
        honest = super().update_for(upload)
        return {
            layer: {n: self.reference[layer][n] + self.factor * (t - self.reference[layer][n]) for n, t in tensors.items()}
            for layer, tensors in honest.items()
        }


@dataclass(frozen=True)
class Case:
    name: str
    attack: float | None  # the attacker's factor; None = it behaves
    method: str


CASES = (
    Case("no attack", None, "mean"),
    Case("x100, no defence", 100.0, "mean"),
    Case("x100, clip", 100.0, "clip"),
    Case("x100, median", 100.0, "median"),
    Case("x100, trimmed mean", 100.0, "trimmed_mean"),
    Case("sign flip, no defence", -1.0, "mean"),
    Case("sign flip, median", -1.0, "median"),
)


@dataclass(frozen=True)
class Size:
    rounds: int = 5
    train_size: int = 96
    val_size: int = 48
    local_steps: int = 6


def run_case(case: Case, size: Size, workdir: Path, seed: int) -> dict[int, dict[str, float]]:
    """round -> honest worker -> validation accuracy."""
    parts = partition_federation(list(TASKS), 2 * len(TASKS), size.train_size, size.val_size, alpha=0.5, seed=seed)
    base = workdir / case.name.replace(" ", "_").replace(",", "")
    write_partitions(parts, base / "data")
    run = RunConfig.model_validate(
        {
            "strategy": "fedit",
            "rounds": size.rounds,
            "seed": seed,
            "min_workers": len(parts),
            "round_deadline_s": 3600,
            "train": {"local_steps": size.local_steps, "batch_size": 16, "learning_rate": 2e-3, "max_seq_length": 48},
            "robust": {"method": case.method, "trim_fraction": 0.125},
        }
    )
    coordinator, port = start_coordinator(run, base / "state")
    workers: list[Worker] = []
    for p in parts:
        cfg = loopback_worker(p.client_id, port, DataConfig(dir=base / "data" / p.client_id), base / "workers" / p.client_id)
        attacks = case.attack is not None and p.client_id == ATTACKER
        workers.append(Attacker(cfg, case.attack) if attacks and case.attack is not None else Worker(cfg))
    codes = run_workers(workers)
    try:
        if any(c != ExitCode.OK for c in codes.values()):
            raise RuntimeError(f"{case.name}: workers failed {codes}")
        evals = coordinator.engine.store.evaluations()
    finally:
        coordinator.stop(grace=0.5)
    return {r: {w: m["accuracy"] for w, m in per.items() if w != ATTACKER} for r, per in evals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds on tiny data (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = Size(rounds=2, train_size=16, val_size=8, local_steps=1) if args.quick else Size()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    print(
        f"robust aggregation benchmark: FedIT, 8 clients on {', '.join(TASKS)} (2 per task), {ATTACKER} attacks; "
        f"{size.rounds} rounds x {size.local_steps} steps; workers are threads of this process over gRPC",
        flush=True,
    )
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedtree-robust-") as tmp:
        for case in CASES:
            t0 = time.monotonic()
            acc = run_case(case, size, Path(tmp), args.seed)
            last = statistics.fmean(acc[max(acc)].values())
            best = max(statistics.fmean(per.values()) for per in acc.values())
            rows.append((case, last, best, time.monotonic() - t0))
            print(
                f"  {case.name:<24} honest mean acc last {100 * last:5.1f}  best {100 * best:5.1f}  ({rows[-1][3]:.0f} s)",
                flush=True,
            )
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(
        f"\nCommand: `python bench/robust.py{' --quick' if args.quick else ''}` — {machine}, {(time.monotonic() - started) / 60:.1f} min\n"
    )
    print("| case | attacker factor | robust.method | honest mean acc, last round (%) | best round (%) |")
    print("|---|---|---|---|---|")
    for case, last, best, _ in rows:
        factor = "—" if case.attack is None else f"{case.attack:g}"
        print(f"| {case.name} | {factor} | {case.method} | {100 * last:.1f} | {100 * best:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
