"""Late joiners: what placing a client that joins after the tree is built is worth.

The planted `tasks` federation of bench/tree_recovery.py (3 tasks x 2 label-skew subgroups x 2
clients; worker/data/planted.py) with one client per task held back: the second client of skew
subgroup 0 of each task (its partner stays, so its subgroup is in the tree). Three conditions,
each a real coordinator (gRPC, loopback) with real worker.runner.Workers as threads, fedtree:

  place    the held-back clients join after the tree is built (`fedtree.late_join: place`, the
           default): their own warmup of late_warmup_rounds (= warmup_rounds) rounds from the
           shared seeded init, then placed in the tree; cluster + external experts after that
  mean     the same clients join at the same time, but get everyone's mean in every layer at
           once (`fedtree.late_join: mean`: fedtree's behaviour before placement existed)
  present  every client is there from round 1 (the tree is built over all of them)

The coordinator is paused while the build round runs, the late workers join, and it resumes:
they take part from the first round after the build. Reported per seed: the late joiners' mean
accuracy on their own validation splits after the last round (the papers' protocol: the model
they use, evaluated after aggregation) and its mean over the rounds after their placement round;
and, for `place`, whether each landed with its task (its cluster in every layer where its task
has a cluster of its own in the tree's cuts).

    python bench/late_join.py                 # 3 seeds (make bench-late-join)
    python bench/late_join.py --seeds 0 --doc # also write the table into docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_block  # noqa: E402
from bench.simulation import loopback_worker, start_coordinator, start_worker  # noqa: E402
from common.config import DataConfig, RunConfig  # noqa: E402
from worker.data.planted import PlantedClient, planted_federation, write_planted_dirs  # noqa: E402

DOC = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- late-join:begin -->", "<!-- late-join:end -->"
TASKS = ("wordnet_pos", "wordnet_noun_supersense", "fortunes")
CONDITIONS = ("place", "mean", "present")


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    warmup_rounds: int = 2
    rounds: int = 7  # 2 warmup, 2 late warmup (placed after round 4), 3 rounds with experts
    local_steps: int = 4
    train_size: int = 48
    val_size: int = 24
    batch_size: int = 16
    learning_rate: float = 2e-3  # bench/tree_recovery.py's
    max_seq_length: int = 40
    concentration: float = 0.9
    fedtree: dict[str, Any] = field(default_factory=dict)  # further fedtree knobs


@dataclass
class LateOutcome:
    condition: str
    seed: int
    late: list[str]
    meta: dict[str, Any]  # the coordinator's strategy meta after the last round
    accuracy: dict[int, dict[str, float]]  # round -> worker -> accuracy after that round's aggregation
    seconds: float
    state_dir: Path  # the coordinator's, stopped


def planted(settings: Settings, tasks: Sequence[str] = TASKS) -> list[PlantedClient]:
    return planted_federation(tasks, 2, 2, settings.train_size, settings.val_size, settings.concentration, settings.seed)


def held_back(clients: Sequence[PlantedClient]) -> list[str]:
    """One client per task: the second client of its skew subgroup 0."""
    out = []
    for task in dict.fromkeys(c.task for c in clients):
        group = [c.client_id for c in clients if c.task == task and c.skew == 0]
        out.append(group[-1])
    return out


def run_late_federation(
    clients: Sequence[PlantedClient],
    late: Sequence[str],
    condition: str,
    settings: Settings,
    workdir: Path,
    model_path: Path | None = None,
) -> LateOutcome:
    """One fedtree run; `late` clients join after the tree is built (`condition` place or mean) or
    are there from the start (present)."""
    from common.exit_codes import ExitCode
    from worker.runner import Worker

    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}")
    root = workdir / f"{condition}-seed{settings.seed}"
    data = {c: DataConfig(dir=d) for c, d in write_planted_dirs(clients, root / "data").items()}
    late_now = list(late) if condition != "present" else []
    early = [c.client_id for c in clients if c.client_id not in late_now]
    run = RunConfig.model_validate(
        {
            "strategy": "fedtree",
            "rounds": settings.rounds,
            "seed": settings.seed,
            "min_workers": len(early),
            "round_deadline_s": 3600,
            "train": {
                "local_steps": settings.local_steps,
                "batch_size": settings.batch_size,
                "learning_rate": settings.learning_rate,
                "max_seq_length": settings.max_seq_length,
            },
            "fedtree": {
                "warmup_rounds": settings.warmup_rounds,
                "late_join": "mean" if condition == "mean" else "place",
                **settings.fedtree,
            },
        }
    )
    coordinator, port = start_coordinator(run, root / "state")
    engine = coordinator.engine
    codes: dict[str, int] = {}

    def start(client_id: str) -> threading.Thread:
        cfg = loopback_worker(
            client_id, port, data[client_id], root / "workers" / client_id, model_path=model_path, local_eval=False
        )
        return start_worker(Worker(cfg), codes)

    began = time.monotonic()
    try:
        threads = [start(c) for c in early]
        if late_now:
            # pause while the build round runs: the late workers join before the next round opens
            _wait(lambda: engine.current is not None and engine.current.round >= settings.warmup_rounds)
            engine.set_paused(True)
            _wait(lambda: engine.last_closed >= settings.warmup_rounds)
            threads += [start(c) for c in late_now]
            _wait(lambda: all(w in engine.workers for w in late_now))
            engine.set_paused(False)
        for t in threads:
            t.join()
        bad = {w: c for w, c in codes.items() if c != ExitCode.OK}
        if bad:
            raise RuntimeError(f"{root.name}: workers failed {bad}")
        meta = engine.store.get("strategy_meta") or {}
        evaluations = engine.store.evaluations()
    finally:
        coordinator.stop(grace=0.5)
    accuracy = {r: {w: m["accuracy"] for w, m in per.items() if "accuracy" in m} for r, per in evaluations.items()}
    return LateOutcome(condition, settings.seed, list(late), meta, accuracy, time.monotonic() - began, root / "state")


def _wait(condition: Any, timeout: float = 3600.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the federation did not get there in time")
        time.sleep(0.02)


def with_its_task(meta: dict[str, Any], clients: Sequence[PlantedClient], worker: str) -> bool | None:
    """Did `worker` land with its task: in every layer where the members of its task (tree leaves)
    form clusters of their own, in one of those? None: no layer separates its task."""
    task_of = {c.client_id: c.task for c in clients}
    leaves = set((meta.get("tree") or {}).get("leaves", []))
    checked = False
    for assignment in meta["assignment"].values():
        mine = {w for w in leaves if task_of[w] == task_of[worker]}
        own = {c for w, c in assignment.items() if w in mine}
        others = {c for w, c in assignment.items() if w in leaves and w not in mine}
        if own & others:  # its task shares a cluster with another task here
            continue
        checked = True
        if assignment.get(worker) not in own:
            return False
    return True if checked else None


def with_its_partner(meta: dict[str, Any], clients: Sequence[PlantedClient], worker: str) -> bool:
    """Is `worker` in the deepest layer's cluster of the other client(s) of its planted subgroup?"""
    subgroup = {c.client_id: c.subgroup for c in clients}
    deepest = meta["assignment"][max(meta["assignment"], key=int)]
    mates = {w for w, c in deepest.items() if c == deepest[worker] and w != worker}
    return any(subgroup.get(w) == subgroup[worker] for w in mates)


# -- report -----------------------------------------------------------------------------------------
def late_accuracy(outcome: LateOutcome, after: int) -> tuple[float, float]:
    """(the late joiners' mean accuracy after the last round, its mean over rounds > `after`)."""
    last = max(outcome.accuracy)
    final = statistics.fmean(outcome.accuracy[last][w] for w in outcome.late)
    rounds = [r for r in outcome.accuracy if r > after]
    over = statistics.fmean(statistics.fmean(outcome.accuracy[r][w] for w in outcome.late) for r in rounds)
    return final, over


def table(outcomes: list[LateOutcome], clients_of: dict[int, list[PlantedClient]], settings: Settings) -> str:
    placed_after = settings.warmup_rounds + (settings.fedtree.get("late_warmup_rounds") or settings.warmup_rounds)
    seeds = sorted({o.seed for o in outcomes})
    by = {(o.condition, o.seed): o for o in outcomes}
    rows = [
        "| condition | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | mean over rounds "
        f"{placed_after + 1}-{settings.rounds} |",
        "|---|" + "---|" * (len(seeds) + 2),
    ]
    labels = {
        "place": "placed in the tree (late_join: place)",
        "mean": "everyone's mean (late_join: mean, before)",
        "present": "present from the start",
    }
    for condition in CONDITIONS:
        got = [late_accuracy(by[(condition, s)], placed_after) for s in seeds if (condition, s) in by]
        if not got:
            continue
        finals = [f for f, _ in got]
        overs = [o for _, o in got]
        sd = f" ± {100 * statistics.stdev(finals):.1f}" if len(finals) > 1 else ""
        rows.append(
            f"| {labels[condition]} | "
            + " | ".join(f"{100 * f:.1f}" for f in finals)
            + f" | **{100 * statistics.fmean(finals):.1f}**{sd} | {100 * statistics.fmean(overs):.1f} |"
        )
    finals = {c: {s: late_accuracy(by[(c, s)], placed_after)[0] for s in seeds if (c, s) in by} for c in CONDITIONS}
    pairs = []
    for other in ("mean", "present"):
        common = [s for s in seeds if s in finals["place"] and s in finals[other]]
        if common:
            diffs = [100 * (finals["place"][s] - finals[other][s]) for s in common]
            pairs.append(f"place - {other} {', '.join(f'{d:+.1f}' for d in diffs)} (mean {statistics.fmean(diffs):+.1f})")
    if pairs:
        rows.append("\nPaired difference per seed (points): " + "; ".join(pairs) + ".")
    landed = []
    for s in seeds:
        o = by.get(("place", s))
        if o is not None:
            clients = clients_of[s]
            task = [with_its_task(o.meta, clients, w) for w in o.late]
            partner = [with_its_partner(o.meta, clients, w) for w in o.late]
            branched = [w for w in o.late if any(row[4] for row in o.meta["placements"][w]["layers"])]
            landed.append(
                f"seed {s}: with its task {sum(m is True for m in task)}/{sum(m is not None for m in task)}, with its "
                f"subgroup partner in the deepest layer {sum(partner)}/{len(partner)}, a branch of its own {len(branched)}"
            )
    note = (
        "\n\nWhere the late joiners went (with its task: in every layer where its task has clusters of its own, in one "
        "of them; layers where tasks share a cluster do not count): " + "; ".join(landed) + "."
    )
    return "\n".join(rows) + (note if landed else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--rounds", type=int, default=Settings.rounds)
    parser.add_argument("--local-steps", type=int, default=Settings.local_steps)
    parser.add_argument("--train-size", type=int, default=Settings.train_size)
    parser.add_argument("--val-size", type=int, default=Settings.val_size)
    parser.add_argument("--load", default="", help="what else loads the machine, for the report")
    parser.add_argument("--doc", action="store_true", help="write the table into docs/BENCHMARKS.md")
    parser.add_argument("--keep", type=Path, help="keep every run's data, worker checkpoints and state under this directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)  # many worker threads share the cores
    seeds = [int(s) for s in args.seeds.split(",")]
    conditions = args.conditions.split(",")
    base = Settings(rounds=args.rounds, local_steps=args.local_steps, train_size=args.train_size, val_size=args.val_size)
    load_before = os.getloadavg()
    print(f"late join: {len(seeds)} seed(s) x {conditions}, {len(TASKS) * 4} clients, {base.rounds} rounds", flush=True)
    started = time.monotonic()
    outcomes: list[LateOutcome] = []
    clients_of: dict[int, list[PlantedClient]] = {}
    with tempfile.TemporaryDirectory(prefix="fedtree-late-join-") as scratch:
        tmp = args.keep or Path(scratch)
        for seed in seeds:
            settings = Settings(**{**base.__dict__, "seed": seed})
            clients = clients_of[seed] = planted(settings)
            late = held_back(clients)
            for condition in conditions:
                outcome = run_late_federation(clients, late, condition, settings, tmp)
                outcomes.append(outcome)
                placed_after = settings.warmup_rounds * 2
                final, over = late_accuracy(outcome, placed_after)
                extra = ""
                if condition == "place":
                    extra = "; with its task: " + str([with_its_task(outcome.meta, clients, w) for w in late])
                    extra += ", with its partner: " + str([with_its_partner(outcome.meta, clients, w) for w in late])
                print(
                    f"seed {seed} {condition}: late joiners {late} accuracy {100 * final:.1f} (rounds > {placed_after}: "
                    f"{100 * over:.1f}) in {outcome.seconds:.0f} s{extra}",
                    flush=True,
                )
    wall = time.monotonic() - started
    load_after = os.getloadavg()
    cmd = "python bench/late_join.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
    s = base
    header = (
        f"Command: `{cmd}` — {time.strftime('%Y-%m-%d')}, {machine}, wall time {wall / 60:.1f} min; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after{(' (' + args.load + ')') if args.load else ''}.\n"
        f"The planted `tasks` federation ({', '.join(TASKS)} x 2 label-skew subgroups x 2 clients, {s.train_size} train / "
        f"{s.val_size} val per client, concentration {s.concentration}) with one client per task held back (the second of "
        f"skew subgroup 0). MiniLM-L6 + LoRA r=8 (query, value), fedtree defaults (distance on A, late_threshold 1.0), "
        f"{s.rounds} rounds of {s.local_steps} local steps (batch {s.batch_size}, lr {s.learning_rate}, max "
        f"{s.max_seq_length} tokens), warmup {s.warmup_rounds}; the late joiners join before round {s.warmup_rounds + 1} "
        f"(the coordinator paused over the build), run their own warmup of {s.warmup_rounds} rounds and are placed after "
        f"round {2 * s.warmup_rounds}. Accuracy: the late joiners' mean on their own validation splits after the last "
        "round (%), per seed.\n"
    )
    block = header + "\n" + table(outcomes, clients_of, base) + "\n"
    print("\n" + block)
    if args.doc:
        write_block(DOC, BEGIN, END, block, "late joiners")
        print(f"wrote {DOC}")
    print(f"wall time {wall / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
