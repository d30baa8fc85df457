"""The accuracy benchmark's vocabulary: methods, the knobs fixed on the tuning split, federations,
presets, and what one run returns (bench/accuracy.py runs them, bench/accuracy_report.py reports)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from bench.generation import GENERATION_TASKS

# name -> (strategy, extra fedtree config); ablations of fedtree are named fedtree-*
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
    # beyond the paper (an option, not the default): a personal expert beside the cluster and external ones
    "fedtree-personal": ("fedtree", {"personal": True}),
}
ALL = tuple(METHODS)
# the baselines a clustered method must beat; ablations are compared with fedtree, not counted as baselines
BASELINES = ("local", "fedit", "ffa", "fedsa", "fedper", "fedalt", "flat", "indep")
CORE = ("local", "fedit", "fedsa", "fedper", "fedalt", "flat", "fedtree")

# Three tasks with disjoint label sets (FedLEASE: one task per group of clients) and one task for
# the label-skew federation (FedRoRA: one task, Dirichlet(0.5) across many clients).
TASKS3 = ("bbc_news", "fortunes", "wordnet_noun_supersense")
SKEW_TASK = "wordnet_noun_supersense"


@dataclass(frozen=True)
class Knobs:
    """What the paper leaves open and our budget makes matter. The defaults below were fixed on the
    tuning split (`--preset tune`: seeds TUNE_SEEDS, never a reported seed) before any reported run;
    docs/BENCHMARKS.md ("accuracy — sensitivity") holds the table they were read from."""

    head_mode: str = "local"
    lambda_init: float = 0.8
    theta_lr: float = 1e-2
    warmup_rounds: int = 2
    tau: float = 0.1
    window: int = 3
    metric: str = "span"
    distance_on: str = "B"
    personal: bool = False  # beyond the paper; only ever an option in the tables

    def label(self) -> str:
        return (
            f"head {self.head_mode}, lambda_init {self.lambda_init}, theta_lr {self.theta_lr}, warmup {self.warmup_rounds}, "
            f"tau {self.tau}, K {self.window}, metric {self.metric}, distance on {self.distance_on}"
            + (", personal expert" if self.personal else "")
        )


@dataclass(frozen=True)
class Federation:
    """Who holds what: `clients_per_task` clients on each task, label proportions Dirichlet(alpha) (None = IID)."""

    name: str
    tasks: tuple[str, ...]
    clients_per_task: int
    alpha: float | None
    methods: tuple[str, ...] = ALL

    @property
    def n_clients(self) -> int:
        return self.clients_per_task * len(self.tasks)

    def describe(self) -> str:
        skew = "IID labels" if self.alpha is None else f"Dirichlet({self.alpha}) label skew"
        return f"`{self.name}`: {self.n_clients} clients, {self.clients_per_task} per task on {', '.join(self.tasks)}, {skew}"


TASKS_DIR = Federation("tasks", TASKS3, 4, 0.5)
TASKS_IID = Federation("tasks-iid", TASKS3, 4, None, CORE)
SKEW = Federation("skew", (SKEW_TASK,), 12, 0.5, CORE)
SKEW_SHORT = replace(SKEW, methods=("local", "fedalt", "fedtree"))
TUNE_SEEDS = (100,)


@dataclass(frozen=True)
class Preset:
    seeds: tuple[int, ...]
    federations: tuple[Federation, ...] = (TASKS_DIR,)
    rounds: int = 8
    train_size: int = 24  # few examples per client, many epochs over them (the authors' regime)
    val_size: int = 24
    local_epochs: int = 2  # per round, as in FedLEASE/FedRoRA
    batch_size: int = 8
    learning_rate: float = 2e-3  # chosen a priori (no tuning on any split)
    max_seq_length: int = 32
    knobs: Knobs = Knobs()
    task: str = "classification"  # or causal_lm: tasks are then reasoning-gym datasets, the metric ROUGE-1
    max_new_tokens: int = 12
    num_beams: int = 1
    local_steps: int = 0  # > 0 overrides local_epochs (generation presets)

    @property
    def metric(self) -> str:
        return "rouge1" if self.task == "causal_lm" else "accuracy"

    @property
    def steps_per_round(self) -> int:
        return self.local_steps or self.local_epochs * -(-self.train_size // self.batch_size)

    def runs(self) -> list[tuple[Federation, int, str]]:
        return [(fed, seed, m) for fed in self.federations for seed in self.seeds for m in fed.methods]


PRESETS = {
    # FedLEASE protocol, one seed (make bench-accuracy)
    "quick": Preset(seeds=(0,)),
    # both protocols, 3 seeds: every method on `tasks`; on `skew` fedtree against local and the best baseline of
    # the tuning split (fedalt). Sized to what a 3-hour session on 2 cores allows (~80 min): `tasks-iid` and the
    # other methods on `skew` are in the `tasks` and `skew` presets.
    "full": Preset(seeds=(0, 1, 2), federations=(TASKS_DIR, SKEW_SHORT)),
    "tasks": Preset(seeds=(0, 1, 2), federations=(TASKS_DIR, TASKS_IID)),
    "skew": Preset(seeds=(0, 1, 2), federations=(SKEW,)),
    # the authors' sizes (1000 train / 200 val per client, 25 rounds, 5 warmup): for an accelerator, not this CPU
    "paper": Preset(
        seeds=(0, 1, 2),
        federations=(TASKS_DIR, SKEW),
        rounds=25,
        train_size=1000,
        val_size=200,
        batch_size=32,
        max_seq_length=128,
        knobs=Knobs(warmup_rounds=5),
    ),
    "smoke": Preset(
        seeds=(0,),
        federations=(Federation("smoke", ("bbc_news", "fortunes"), 2, 0.5, ("fedit", "fedtree")),),
        rounds=2,
        train_size=16,
        val_size=8,
        local_steps=1,
        knobs=Knobs(warmup_rounds=1),
    ),
    # SmolLM2-135M-Instruct on 4 reasoning-gym families x 2 clients; sized for < 1 h on a shared 2-core CPU
    "generation": Preset(
        seeds=(0,),
        federations=(Federation("generation", GENERATION_TASKS, 2, None, ("fedit", "flat", "fedtree")),),
        rounds=3,
        train_size=24,
        val_size=6,
        local_steps=3,
        batch_size=4,
        learning_rate=1e-3,
        max_seq_length=112,
        knobs=Knobs(warmup_rounds=1),
        task="causal_lm",
        max_new_tokens=10,
    ),
    "generation-smoke": Preset(
        seeds=(0,),
        federations=(Federation("generation-smoke", GENERATION_TASKS[:2], 2, None, ("fedit", "fedtree")),),
        rounds=2,
        train_size=4,
        val_size=2,
        local_steps=1,
        batch_size=2,
        learning_rate=1e-3,
        max_seq_length=96,
        knobs=Knobs(warmup_rounds=1),
        task="causal_lm",
        max_new_tokens=4,
    ),
}


@dataclass
class RunResult:
    method: str
    seed: int
    federation: str
    # round -> client -> accuracy (ROUGE-1 for generation)
    acc: dict[int, dict[str, float]]
    client_task: dict[str, str]
    seconds: float
    cuts: list[int] = field(default_factory=list)
    metrics: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)  # round -> client -> every metric
    peak_rss: int = 0  # bytes, this process (all worker threads + coordinator)
    lambdas: dict[int, dict[str, dict[int, float]]] = field(default_factory=dict)  # round -> client -> layer -> lambda
    knobs: str = ""
    tree_ari: float | None = None  # adjusted Rand index of the tree's top split (one cluster per task) vs the tasks
