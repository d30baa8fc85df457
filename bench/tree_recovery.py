"""Tree recovery: does FedTreeLoRA's client tree find the planted structure of a federation?

Planted federations (worker/data/planted.py) from the offline corpora: every task's clients form
label-skew subgroups, and skew subgroup g of EVERY task concentrates ~80-90 % of its examples on
the same label INDICES {2g, 2g+1} of its task's sorted labels (the adversarial case for classifier
heads keyed by label index):

  tasks  3 tasks x 2 skew subgroups x 2 clients, partition directories (meta.json: task, labels)
  skew   1 task x 3 skew subgroups x 2 clients, partition directories
  jsonl  2 tasks x 2 skew subgroups x 2 clients, plain JSONL files with named labels read through
         data.train_path / data.val_path with data.task set to the task name

Each federation runs through the real coordinator (gRPC on loopback) and real worker.runner.Workers
(threads of this process, as bench/accuracy.py) with strategy fedtree and rounds = warmup_rounds:
the tree is built at the close of the last warmup round from every worker's uploaded A and B.
The coordinator's tree and cuts are read from its state (strategy_meta). The distance variants
(B or the product B@A per module; euclidean or cosine) are recomputed offline from each worker's
checkpoint (its own A and B after the last warmup round = what it uploaded) with the
coordinator's own functions (stack_b, layer_distances, build_tree, choose_cuts), and the offline
tree of the default distance (fedtree.distance_on / metric) is checked against the coordinator's.

Reported: adjusted Rand index of tree.partition(#tasks) vs the tasks (the top split) and of
tree.partition(#subgroups) vs the skew subgroups, and the per-layer cuts, per federation x
labelling x head mode x variant. The BEFORE rows of `tasks` use the colliding labelling of the old
init (integer label names "0", "1", ..., no task namespace: head row i is shared by label i of
every task). head_mode "cluster" trains exactly as "local" before the tree exists (warmup is
local-only), so it is not run separately.

    python bench/tree_recovery.py            # full (make bench-tree-recovery)
    python bench/tree_recovery.py --quick    # head mode local only, fewer steps
    python bench/tree_recovery.py --doc      # also write the tables into docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_block  # noqa: E402
from bench.simulation import loopback_worker, run_workers, start_coordinator  # noqa: E402
from bench.tree_recovery_analysis import (  # noqa: E402
    DEFAULT_VARIANT,
    Federation,
    RunOutcome,
    analyse,
    fmt_ari,
    goal_misses,
    tables,
)
from common.config import DataConfig, RunConfig  # noqa: E402
from worker.data.planted import (  # noqa: E402
    focus_share,
    index_keyed,
    planted_federation,
    write_planted_dirs,
    write_planted_jsonl,
)

DOC = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- tree-recovery:begin -->", "<!-- tree-recovery:end -->"


FEDERATIONS: dict[str, Federation] = {
    "tasks": Federation("tasks", ("wordnet_pos", "wordnet_noun_supersense", "fortunes"), 2),
    "skew": Federation("skew", ("wordnet_verb_supersense",), 3),
    "jsonl": Federation("jsonl", ("bbc_news", "fortunes"), 2, layout="jsonl"),
}


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    warmup_rounds: int = 2
    local_steps: int = 8
    train_size: int = 64
    val_size: int = 16
    batch_size: int = 16
    learning_rate: float = 2e-3  # bench/accuracy.py's a-priori choice; not tuned here
    max_seq_length: int = 48
    concentration: float = 0.9


def run_federation(
    fed: Federation,
    labelling: str,
    head_mode: str,
    settings: Settings,
    workdir: Path,
    model_path: Path | None = None,
) -> RunOutcome:
    """One fedtree run of `fed` through the real coordinator and real workers; returns its tree and dirs."""
    from common.exit_codes import ExitCode
    from worker.runner import Worker

    clients = planted_federation(
        fed.tasks,
        fed.subgroups_per_task,
        fed.clients_per_subgroup,
        settings.train_size,
        settings.val_size,
        settings.concentration,
        settings.seed,
    )
    tag = f"{fed.name}-{labelling}-{head_mode}"
    root = workdir / tag
    if labelling == "index":
        if fed.layout != "dirs":
            raise ValueError("the index-keyed labelling is written as partition directories only")
        data = {c: DataConfig(dir=d) for c, d in write_planted_dirs(index_keyed(clients), root / "data", namespace=False).items()}
    elif fed.layout == "jsonl":
        task_of = {c.client_id: c.task for c in clients}
        files = write_planted_jsonl(clients, root / "data")
        data = {c: DataConfig(train_path=tr, val_path=va, task=task_of[c]) for c, (tr, va) in files.items()}
    else:
        data = {c: DataConfig(dir=d) for c, d in write_planted_dirs(clients, root / "data").items()}
    run = RunConfig.model_validate(
        {
            "strategy": "fedtree",
            "rounds": settings.warmup_rounds,
            "seed": settings.seed,
            "min_workers": len(clients),
            "round_deadline_s": 3600,
            "train": {
                "local_steps": settings.local_steps,
                "batch_size": settings.batch_size,
                "learning_rate": settings.learning_rate,
                "max_seq_length": settings.max_seq_length,
                "head_mode": head_mode,
            },
            "fedtree": {"warmup_rounds": settings.warmup_rounds},
        }
    )
    coordinator, port = start_coordinator(run, root / "state")
    start = time.monotonic()
    try:
        workers = [Worker(loopback_worker(c, port, data[c], root / "workers" / c, model_path=model_path)) for c in data]
        codes = run_workers(workers)
        bad = {w: c for w, c in codes.items() if c != ExitCode.OK}
        if bad:
            raise RuntimeError(f"{tag}: workers failed {bad}")
        meta = coordinator.engine.store.get("strategy_meta") or {}
        if not meta.get("tree"):
            raise RuntimeError(f"{tag}: the coordinator built no tree")
    finally:
        coordinator.stop(grace=0.5)
    seconds = time.monotonic() - start
    return RunOutcome(fed, labelling, head_mode, clients, run, meta, {w.config.worker_id: w.out for w in workers}, seconds)


def write_doc(block: str, doc: Path = DOC) -> None:
    write_block(doc, BEGIN, END, block, "tree recovery")


def plan(federations: list[str], head_modes: list[str]) -> list[tuple[Federation, str, str]]:
    runs = []
    for name in federations:
        fed = FEDERATIONS[name]
        for labelling in ("index", "name") if name == "tasks" else ("name",):
            for head in head_modes:
                runs.append((fed, labelling, head))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="head mode local only, 4 local steps per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-rounds", type=int, default=2, help="rounds = warmup rounds (the tree is built at the last)")
    parser.add_argument("--local-steps", type=int, default=None, help="local steps per round (default 8; --quick 4)")
    parser.add_argument("--train-size", type=int, default=64)
    parser.add_argument("--val-size", type=int, default=16)
    parser.add_argument("--federations", default=",".join(FEDERATIONS), help="comma-separated subset of " + ",".join(FEDERATIONS))
    parser.add_argument("--head-modes", default=None, help="comma-separated subset of frozen,local (default both; --quick local)")
    parser.add_argument("--doc", action="store_true", help="write the tables into docs/BENCHMARKS.md")
    parser.add_argument("--keep", type=Path, help="keep every run's data, worker checkpoints and state under this directory")
    args = parser.parse_args(argv)
    federations = args.federations.split(",")
    head_modes = (args.head_modes or ("local" if args.quick else "frozen,local")).split(",")
    steps = args.local_steps if args.local_steps is not None else (4 if args.quick else 8)
    settings = Settings(
        seed=args.seed, warmup_rounds=args.warmup_rounds, local_steps=steps, train_size=args.train_size, val_size=args.val_size
    )
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)  # many worker threads share the cores
    runs = plan(federations, head_modes)
    worker_runs = sum(f.clients for f, _, _ in runs)
    print(
        f"tree recovery: {len(runs)} runs (federation x labelling x head mode: "
        + ", ".join(f"{f.name}/{lab}/{h}" for f, lab, h in runs)
        + f"); {worker_runs} worker runs x {settings.warmup_rounds} rounds x {steps} steps (batch {settings.batch_size}) = "
        f"{worker_runs * settings.warmup_rounds * steps} local steps on MiniLM; seed {settings.seed}",
        flush=True,
    )
    started = time.monotonic()
    analysed = []
    with tempfile.TemporaryDirectory(prefix="fedtree-tree-recovery-") as scratch:
        tmp = args.keep or scratch
        for i, (fed, labelling, head) in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {fed.name} {labelling}-keyed head={head}: {fed.clients} workers ...", flush=True)
            outcome = run_federation(fed, labelling, head, settings, Path(tmp))
            check, results = analyse(outcome)
            analysed.append((outcome, check, results))
            r = check["coordinator"]
            share = np.mean([focus_share(c) for c in outcome.clients])
            print(
                f"    {outcome.seconds:.0f} s; coordinator tree: task ARI {fmt_ari(r.task_ari)} subgroup ARI {fmt_ari(r.subgroup_ari)} "
                f"cuts {r.cuts}; offline {DEFAULT_VARIANT[0]}/{DEFAULT_VARIANT[1]} = coordinator: {check['check']}; focus share {share:.2f}",
                flush=True,
            )
    wall = time.monotonic() - started
    report = tables(analysed)
    misses = goal_misses(analysed)
    mismatches = [f"{o.federation.name}/{o.labelling}/{o.head_mode}" for o, c, _ in analysed if not all(c["check"].values())]
    cmd = "python bench/tree_recovery.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
    header = (
        f"Command: `{cmd}` — {time.strftime('%Y-%m-%d')}, {machine}, wall time {wall / 60:.1f} min.\n"
        f"Planted federations (worker/data/planted.py): skew subgroup g of every task puts {settings.concentration:.0%} of "
        f"its drawn examples on label indices {{2g, 2g+1}} of the task's sorted labels (after one example per label; "
        f"measured focus share {np.mean([focus_share(c) for o, _, _ in analysed for c in o.clients]):.2f}), "
        f"{settings.train_size} train / {settings.val_size} val per client; MiniLM-L6 + LoRA r=8 (query, value); fedtree "
        f"with rounds = warmup = {settings.warmup_rounds} x {steps} local steps (batch {settings.batch_size}, lr "
        f"{settings.learning_rate}, max {settings.max_seq_length} tokens), tree built at the close of round "
        f"{settings.warmup_rounds}, average linkage, cuts with K = 3, tau = 0.1; seed {settings.seed}. Real coordinator "
        "(gRPC, loopback) + real worker.runner.Workers as threads. ARI = adjusted Rand index of tree.partition(#tasks) vs "
        "task (the top split) and of tree.partition(#subgroups) vs skew subgroup. BEFORE = integer label names, no task "
        "namespace (head row i shared by label i of every task, the old index-keyed init). "
        f"{DEFAULT_VARIANT[0]} {DEFAULT_VARIANT[1]} (the default fedtree.distance_on / metric) is the coordinator's "
        "own tree (its offline recomputation from the worker checkpoints is checked equal); the other distances are "
        "recomputed offline from the same checkpoints (BA = B @ A per module, flattened). head_mode cluster trains as "
        "local before the tree exists (warmup is local-only), so it is not run separately. Skew coupling = mean distance "
        "of other-task same-skew pairs / other-task other-skew pairs (< 1: clients of different tasks pulled together by "
        "their skew).\n"
    )
    verdict = (
        f"Goal (ARI 1.0 for task and subgroup with the defaults: name-keyed, head local, {' '.join(DEFAULT_VARIANT)}): "
        + ("met on every federation." if not misses else "MISSED: " + "; ".join(misses) + ".")
        + "\n"
    )
    block = header + "\n" + report + "\n" + verdict
    print("\n" + block)
    if mismatches:
        print(f"WARNING: offline default-distance tree != coordinator's for {mismatches}")
    if args.doc:
        write_doc(block)
        print(f"wrote {DOC}")
    print(f"wall time {wall / 60:.1f} min")
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
