"""Round overhead benchmark: a federated round of 4 MiniLM workers vs the same local training alone.

Federated run: a real coordinator (gRPC on loopback, in this process) and N real workers, each a
separate `python -m worker` process with 1 torch thread. Every worker timestamps the end of each
phase of a task (worker.runner.Worker.timing, logged as "timing" records in metrics.jsonl); the
coordinator's round close (aggregation + checkpoint) is timed here around RoundEngine._close.

Baselines, without federation: the same N processes (1 torch thread each, same data, same model,
same seeds, same local steps), started together, each running the rounds back to back with
worker.train.train_local; once training only ("train"), once with the two evaluations a worker
does per round ("train+eval": the previous round's model before training, the local model after).

Per round, the slowest worker (the last to push) is the critical path, and
    round = dispatch + pull + evaluation + training + push + aggregation/checkpoint
exactly (dispatch = round opened -> that worker has its task, which includes finishing its own
previous checkpoint; push = transfer + commit up to the close). Waiting for the slowest worker
is reported separately: how long the other workers sit idle after their own push and checkpoint.

    python bench/round_overhead.py            # fedit + fedtree, 5 rounds of 6 steps
    python bench/round_overhead.py --quick    # fedit, 2 rounds of 2 steps
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.config import CoordinatorConfig, DataConfig, RunConfig  # noqa: E402
from worker.data.partition import partition_federation, write_partitions  # noqa: E402

TARGET = 0.05  # federation overhead < 5% of round time
PHASES = ("dispatch", "pull", "evaluation", "training", "push", "aggregation")


@dataclass(frozen=True)
class Setup:
    workers: int
    rounds: int
    local_steps: int
    train_size: int
    val_size: int
    tasks: tuple[str, ...]
    batch_size: int = 16
    max_seq_length: int = 48
    learning_rate: float = 2e-3

    def run_config(self, strategy: str) -> RunConfig:
        return RunConfig.model_validate(
            {
                "strategy": strategy,
                "rounds": self.rounds,
                "seed": 0,
                "min_workers": self.workers,
                "round_deadline_s": 3600,
                "train": {
                    "local_steps": self.local_steps,
                    "batch_size": self.batch_size,
                    "learning_rate": self.learning_rate,
                    "max_seq_length": self.max_seq_length,
                },
                "fedtree": {"warmup_rounds": 1},
            }
        )


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }


# -- federated run -----------------------------------------------------------------------------
def federated(strategy: str, setup: Setup, data: Path, work: Path) -> dict[str, Any]:
    """Run the federation; return per-round records with the critical-path breakdown."""
    from coordinator.server import Coordinator

    cfg = CoordinatorConfig(
        host="127.0.0.1", port=0, state_dir=work / "state", run=setup.run_config(strategy), long_poll_s=10.0, insecure=True
    )
    coordinator = Coordinator(cfg)
    closes: dict[int, tuple[float, float]] = {}
    engine = coordinator.engine
    close = engine._close

    def timed_close(cur: Any) -> None:
        t0 = time.time()
        close(cur)
        if not cur.evaluating:
            closes[cur.round] = (t0, time.time())

    engine._close = timed_close  # type: ignore[method-assign]
    port = coordinator.start()
    env = {
        **_env(),
        "FEDTREE_WORKER__PROGRESS": "false",
        "FEDTREE_WORKER__NUM_THREADS": "1",
        "FEDTREE_WORKER__INSECURE": "true",
    }
    procs = []
    ids = [f"client-{i}" for i in range(setup.workers)]
    for wid in ids:
        cmd = [sys.executable, "-m", "worker", "--coordinator", f"127.0.0.1:{port}", "--worker-id", wid]
        cmd += ["--data-dir", str(data / wid), "--output-dir", str(work / wid)]
        with open(work / f"{wid}.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=ROOT))
    codes = [p.wait() for p in procs]
    rounds = engine.store.rounds()
    coordinator.stop(grace=0.5)
    if any(codes):
        raise RuntimeError(f"{strategy}: worker exit codes {codes}; logs in {work}")
    timing: dict[int, dict[str, dict[str, float]]] = {}
    for wid in ids:
        for line in (work / wid / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec["kind"] == "timing" and "trained" in rec:
                timing.setdefault(rec["round"], {})[wid] = rec
    out = []
    for row in rounds:
        r = row["round"]
        opened, (close_start, close_end) = row["started_at"], closes[r]
        per = timing[r]
        slow = max(per, key=lambda w: per[w]["pushed"])
        t = per[slow]
        train = {w: p["trained"] - p["evaluated"] for w, p in per.items()}
        waits = [max(0.0, close_end - p["saved"]) for w, p in per.items() if w != slow]
        out.append(
            {
                "round": r,
                "wall": close_end - opened,
                "dispatch": t["start"] - opened,
                "pull": t["pulled"] - t["start"],
                "evaluation": (t["evaluated"] - t["pulled"]) + (t["local_evaluated"] - t["trained"]),
                "training": train[slow],
                "push": close_start - t["local_evaluated"],
                "aggregation": close_end - close_start,
                "train_mean": statistics.fmean(train.values()),
                "straggler_wait": statistics.fmean(waits) if waits else 0.0,
                "slowest": slow,
            }
        )
    return {
        "strategy": strategy,
        "rounds": out,
        "first_open": rounds[0]["started_at"],
        "last_close": closes[rounds[-1]["round"]][1],
    }


# -- local baseline ----------------------------------------------------------------------------
def local_child(spec: dict[str, Any]) -> int:
    """One baseline process: build the worker's model, wait for the start signal, train round after round."""
    import torch

    from worker.local_data import load_local_data
    from worker.model import build_model, default_model_path
    from worker.train import evaluate, train_local

    torch.set_num_threads(1)
    run = RunConfig.model_validate(spec["run"])
    data = load_local_data(DataConfig(dir=Path(spec["data_dir"])))
    lm = build_model(default_model_path(), data.label_keys, run.lora, run.seed, run.train.train_head)
    Path(spec["ready"]).touch()
    while not Path(spec["go"]).exists():
        time.sleep(0.01)
    records = []
    for r in range(1, run.rounds + 1):
        t0 = time.time()
        if spec["evaluate"] and r > 1:
            evaluate(lm, data.val, data.label_ids, run.train)
        t1 = time.time()
        seed = zlib.crc32(f"{run.seed}/{r}/{spec['worker_id']}".encode())  # the worker's per-round seed
        train_local(lm, data.train, data.label_ids, run.train, seed, progress=False)
        t2 = time.time()
        if spec["evaluate"]:
            evaluate(lm, data.val, data.label_ids, run.train)
        records.append({"round": r, "start": t0, "trained_from": t1, "trained": t2, "end": time.time()})
    Path(spec["out"]).write_text(json.dumps(records))
    return 0


def baseline(setup: Setup, data: Path, work: Path, evaluate: bool) -> dict[str, Any]:
    work.mkdir(parents=True)
    run = setup.run_config("local").model_dump(mode="json")
    go = work / "go"
    procs, specs = [], []
    for i in range(setup.workers):
        wid = f"client-{i}"
        spec = {
            "run": run,
            "data_dir": str(data / wid),
            "worker_id": wid,
            "evaluate": evaluate,
            "ready": str(work / f"{wid}.ready"),
            "go": str(go),
            "out": str(work / f"{wid}.json"),
        }
        specs.append(spec)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--local-child", json.dumps(spec)]
        with open(work / f"{wid}.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=_env(), cwd=ROOT))
    while not all(Path(s["ready"]).exists() for s in specs):
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError(f"baseline child failed; logs in {work}")
        time.sleep(0.05)
    start = time.time()
    go.touch()
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"baseline exit codes {codes}; logs in {work}")
    recs = [json.loads(Path(s["out"]).read_text()) for s in specs]
    end = max(r[-1]["end"] for r in recs)
    train = [x["trained"] - x["trained_from"] for r in recs for x in r]
    return {"per_round": (end - start) / setup.rounds, "train_mean": statistics.fmean(train)}


# -- report ------------------------------------------------------------------------------------
def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(float(r[key]) for r in rows)


def report(fed: list[dict[str, Any]], base: dict[str, dict[str, Any]], setup: Setup, wall: float, quick: bool) -> str:
    lines = [
        f"round overhead: {setup.workers} worker processes (1 torch thread each) + coordinator in the bench process, "
        f"MiniLM-L6 + LoRA r=8 q/v, {setup.rounds} rounds x {setup.local_steps} local steps (batch {setup.batch_size}, "
        f"max {setup.max_seq_length} tokens), {setup.train_size} train / {setup.val_size} val per client, tasks "
        f"{', '.join(setup.tasks)}; {platform.machine()}, {os.cpu_count()} cores; wall {wall:.0f} s"
        + (" (--quick)" if quick else ""),
        "",
        "Critical path of a round (the last worker to push), seconds, mean over rounds:",
        "",
        "| strategy | round | training | evaluation | pull | push | aggregation + checkpoint | dispatch | "
        "protocol (pull+push+agg+dispatch) | straggler wait (others, mean) | training mean over workers |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in fed:
        rows = f["rounds"]
        protocol = sum(_mean(rows, k) for k in ("pull", "push", "aggregation", "dispatch"))
        lines.append(
            f"| {f['strategy']} | {_mean(rows, 'wall'):.2f} | {_mean(rows, 'training'):.2f} | {_mean(rows, 'evaluation'):.2f} | "
            f"{_mean(rows, 'pull'):.3f} | {_mean(rows, 'push'):.3f} | {_mean(rows, 'aggregation'):.3f} | "
            f"{_mean(rows, 'dispatch'):.3f} | {protocol:.3f} ({100 * protocol / _mean(rows, 'wall'):.1f}%) | "
            f"{_mean(rows, 'straggler_wait'):.2f} | {_mean(rows, 'train_mean'):.2f} |"
        )
    lines += [
        "",
        "Per round vs the same local training without federation (same processes, data, steps, threads, model); "
        "overhead = 1 - local / federated:",
        "",
        "| run | per round s | " + " | ".join(f"vs local {n}: ratio, overhead" for n in base) + " |",
        "|---|---|" + "---|" * len(base),
    ]
    for name, b in base.items():
        lines.append(
            f"| local, {name} (training {b['train_mean']:.2f} s per worker-round) | {b['per_round']:.2f} |" + " - |" * len(base)
        )
    for f in fed:
        per_round = (f["last_close"] - f["first_open"]) / setup.rounds
        cells = [f"{per_round / b['per_round']:.3f}, {100 * (1 - b['per_round'] / per_round):.1f}%" for b in base.values()]
        lines.append(f"| federated {f['strategy']} | {per_round:.2f} | " + " | ".join(cells) + " |")
    lines.append("")
    for f in fed:
        rows = f["rounds"]
        protocol = sum(_mean(rows, k) for k in ("pull", "push", "aggregation", "dispatch")) / _mean(rows, "wall")
        verdict = "met" if protocol < TARGET else f"missed by {100 * (protocol - TARGET):.1f} points"
        worst = max(rows, key=lambda r: r["aggregation"])
        lines.append(
            f"{f['strategy']}: protocol overhead on the critical path {100 * protocol:.1f}% of round time "
            f"(target < {100 * TARGET:.0f}%: {verdict}); slowest aggregation + checkpoint {worst['aggregation']:.3f} s "
            f"(round {worst['round']}); straggler wait {100 * _mean(rows, 'straggler_wait') / _mean(rows, 'wall'):.1f}% "
            "of round time per non-critical worker"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="fedit and the train baseline only, 2 rounds of 2 steps, small splits"
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=6)
    parser.add_argument("--train-size", type=int, default=96)
    parser.add_argument("--val-size", type=int, default=48)
    parser.add_argument("--tasks", default="wordnet_pos,bbc_news")
    parser.add_argument("--strategies", default="fedit,fedtree", help="federated runs (fedtree: 1 warmup round)")
    parser.add_argument("--baselines", default="train,train+eval")
    parser.add_argument("--json", type=Path, help="write the raw per-round records here")
    parser.add_argument("--local-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.local_child:
        return local_child(json.loads(args.local_child))
    if args.quick:
        args.rounds, args.local_steps, args.train_size, args.val_size = 2, 2, 32, 16
        args.strategies, args.baselines = "fedit", "train"
    tasks = tuple(t for t in args.tasks.split(",") if t)
    setup = Setup(args.workers, args.rounds, args.local_steps, args.train_size, args.val_size, tasks)
    started = time.monotonic()
    fed: list[dict[str, Any]] = []
    base: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fedtree-round-overhead-") as tmp:
        data = Path(tmp) / "data"
        parts = partition_federation(list(tasks), setup.workers, setup.train_size, setup.val_size, alpha=0.5, seed=0)
        write_partitions(parts, data)
        baselines = [b for b in args.baselines.split(",") if b]
        strategies = [s for s in args.strategies.split(",") if s]
        for i in range(max(len(baselines), len(strategies))):  # interleaved: load drifts hit both kinds
            if i < len(baselines):
                name = baselines[i]
                base[name] = baseline(setup, data, Path(tmp) / f"local-{name}", evaluate=name == "train+eval")
                print(f"  local {name}: {base[name]['per_round']:.2f} s per round", flush=True)
            if i < len(strategies):
                fed.append(federated(strategies[i], setup, data, Path(tmp) / strategies[i]))
                print(f"  federated {strategies[i]}: {_mean(fed[-1]['rounds'], 'wall'):.2f} s per round", flush=True)
    text = report(fed, base, setup, time.monotonic() - started, args.quick)
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({"federated": fed, "baselines": base}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
