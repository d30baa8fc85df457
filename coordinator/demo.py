"""`make demo`: a real local federation on loopback — one coordinator and N worker processes.

Prepares a heterogeneous federation from the offline corpora (each client gets its own
directory), starts the coordinator and the workers as separate processes, prints each client's
validation accuracy per round as rounds close, and leaves every client's adapter on disk.
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

DEFAULT_TASKS = "wordnet_pos,bbc_news"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedtree-demo", description=__doc__)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--strategy", default="fedit")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated built-in corpora, one group of clients each")
    p.add_argument("--train-size", type=int, default=240)
    p.add_argument("--val-size", type=int, default=120)
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew inside a task")
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--max-seq-length", type=int, default=64)
    p.add_argument("--warmup-rounds", type=int, default=2, help="fedtree: local-only rounds before the tree is built")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=0, help="coordinator gRPC port (0 = any free port)")
    p.add_argument("--dashboard-port", type=int, default=None, help="serve the web dashboard on this port")
    p.add_argument("--admin-token", default="demo-admin", help="token for `fedtree admin` against this demo")
    p.add_argument("--linger", type=float, default=3.0, help="seconds the coordinator keeps serving after the run")
    p.add_argument("--out", type=Path, default=Path("demo-run"), help="run directory (wiped first)")
    p.add_argument(
        "--extra", action="append", default=[], metavar="KEY=VALUE", help="extra run config, e.g. fedtree.warmup_rounds=2"
    )
    return p.parse_args(argv)


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


def _table(evals: dict[int, dict[str, dict[str, float]]], workers: list[str]) -> list[str]:
    lines = ["round  " + "  ".join(f"{w:>9}" for w in workers) + "       mean"]
    for rnd in sorted(evals):
        accs = [evals[rnd].get(w, {}).get("accuracy") for w in workers]
        got = [a for a in accs if a is not None]
        cells = "  ".join(f"{a:9.3f}" if a is not None else f"{'-':>9}" for a in accs)
        lines.append(f"{rnd:>5}  {cells}  {sum(got) / len(got) if got else float('nan'):9.3f}")
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
    parts = partition_federation(tasks, args.workers, args.train_size, args.val_size, alpha=args.alpha, seed=args.seed)
    write_partitions(parts, out / "data")
    for part in parts:
        print(f"  {part.client_id}: {part.task:<24} {len(part.train)} train / {len(part.val)} val, labels {part.label_counts()}")

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
    for part in parts:
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
            part.client_id,
            "--data-dir",
            str(out / "data" / part.client_id),
            "--output-dir",
            str(out / "workers" / part.client_id),
        ]
        with open(out / "logs" / f"{part.client_id}.log", "wb") as log:
            procs[part.client_id] = subprocess.Popen(cmd, stdout=log, stderr=log, env=wenv)
    print(f"coordinator on {target}; logs in {out / 'logs'}")
    print(f"inspect it: fedtree admin tree --coordinator {target} --token {args.admin_token}")
    if args.dashboard_port is not None:
        print(f"dashboard: http://127.0.0.1:{args.dashboard_port}/")

    workers = [p.client_id for p in parts]
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
                lines = _table({r: evals[r] for r in complete}, workers)
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
    print("\nvalidation accuracy of each client's model after each round (papers' protocol):")
    print("\n".join(_table(evals, workers)))
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
