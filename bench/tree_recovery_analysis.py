"""Tree recovery, the analysis half: the planted truth of a run against its client tree.

From a run's outcome (bench/tree_recovery.py runs the federation): the coordinator's tree and cuts,
the offline recomputation of every distance variant (B, B@A, A; euclidean, cosine) from the
workers' warmup checkpoints with the coordinator's own functions, adjusted Rand indices of the top
split vs the tasks and of the subgroup cut vs the skew subgroups, pair distances by relation
(skew coupling), and the markdown tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config import FedTreeConfig, RunConfig
from coordinator.tree import ClientTree, build_tree, choose_cuts, layer_distances, stack_b
from coordinator.tree.spans import span_layer_distances
from worker.data.planted import PlantedClient

VARIANTS: tuple[tuple[str, str], ...] = (
    ("B", "euclidean"),
    ("B", "cosine"),
    ("BA", "euclidean"),
    ("BA", "cosine"),
    ("A", "euclidean"),
    ("A", "cosine"),
    ("B", "span"),
    ("A", "span"),
)
# the coordinator's: fedtree.distance_on and fedtree.metric at their defaults
DEFAULT_VARIANT = (FedTreeConfig().distance_on, FedTreeConfig().metric)


@dataclass(frozen=True)
class Federation:
    name: str
    tasks: tuple[str, ...]
    subgroups_per_task: int
    clients_per_subgroup: int = 2
    layout: str = "dirs"  # dirs: partition directories; jsonl: plain files + data.train_path/val_path + data.task

    @property
    def clients(self) -> int:
        return len(self.tasks) * self.subgroups_per_task * self.clients_per_subgroup


@dataclass
class RunOutcome:
    federation: Federation
    labelling: str  # "name" (task/label keys) or "index" (integer labels, no namespace: the old collisions)
    head_mode: str
    clients: list[PlantedClient]
    run: RunConfig
    meta: dict[str, Any]
    worker_dirs: dict[str, Path]
    seconds: float


@dataclass
class VariantResult:
    variant: tuple[str, str]
    task_ari: float | None
    subgroup_ari: float
    cuts: list[int]
    top_split: list[list[str]] = field(default_factory=list)


def _ari(truth: list[int], labels: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(truth, labels))


def read_own(worker_dir: Path) -> dict[int, dict[str, Any]]:
    """The worker's own LoRA A and B from its checkpoint (keys own/<layer>/<name>)."""
    from safetensors import safe_open

    from worker.checkpoint import FILE

    own: dict[int, dict[str, Any]] = {}
    with safe_open(str(worker_dir / FILE), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open has no items()
            kind, rest = key.split("/", 1)
            if kind == "own":
                layer, name = rest.split("/", 1)
                own.setdefault(int(layer), {})[name] = fh.get_tensor(key)
    return own


def product_ba(own: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per layer and LoRA module, B @ A (the module's weight update up to alpha / r), named '<module>.BA'."""
    out: dict[int, dict[str, Any]] = {}
    for layer, named in own.items():
        for name, b in named.items():
            if ".lora_B." in f".{name}.":
                a = named[name.replace("lora_B", "lora_A")]
                out.setdefault(layer, {})[name.replace("lora_B.weight", "BA").replace("lora_B", "BA")] = b @ a
    return out


def _same_tree(a: ClientTree, b: ClientTree) -> bool:
    if a.leaves != b.leaves or len(a.merges) != len(b.merges):
        return False
    for x, y in zip(a.merges, b.merges):
        if (x.left, x.right, x.size) != (y.left, y.right, y.size) or not np.isclose(
            x.distance, y.distance, rtol=1e-9, atol=1e-12
        ):
            return False
    return True


def _groups(tree: ClientTree, c: int) -> list[list[str]]:
    labels = tree.partition(c)
    return [sorted(w for w, lab in zip(tree.leaves, labels) if lab == k) for k in range(c)]


def analyse(outcome: RunOutcome) -> tuple[dict[str, Any], list[VariantResult]]:
    """The coordinator's tree/cuts and every offline variant's ARIs and cuts; checks offline B/euclid == coordinator."""
    cfg = outcome.run.fedtree
    coord_tree = ClientTree.from_dict(outcome.meta["tree"])
    leaves = list(coord_tree.leaves)
    by_id = {c.client_id: c for c in outcome.clients}
    tasks = list(dict.fromkeys(c.task for c in outcome.clients))
    task_truth = [tasks.index(by_id[w].task) for w in leaves]
    sub_truth = [by_id[w].subgroup for w in leaves]
    n_sub = len(set(sub_truth))
    own = {w: read_own(outcome.worker_dirs[w]) for w in leaves}

    def score(tree: ClientTree, cuts: list[int], variant: tuple[str, str]) -> VariantResult:
        task_ari = _ari(task_truth, tree.partition(len(tasks))) if len(tasks) > 1 else None
        top = _groups(tree, len(tasks)) if len(tasks) > 1 else _groups(tree, 2)
        return VariantResult(variant, task_ari, _ari(sub_truth, tree.partition(n_sub)), cuts, top)

    results = []
    check: dict[str, Any] = {}
    means: dict[str, float] = {}
    for kind, metric in VARIANTS:
        per_client = [product_ba(own[w]) for w in leaves] if kind == "BA" else [own[w] for w in leaves]
        flt = {"B": lambda n: "lora_B" in n, "A": lambda n: "lora_A" in n}.get(kind, lambda n: True)
        if metric == "span":
            Dl = np.stack(
                [span_layer_distances([c[layer] for c in per_client], flt, rows=kind == "A") for layer in sorted(per_client[0])]
            )
        else:
            Dl = layer_distances(stack_b(per_client, names_filter=flt), metric=metric).numpy()  # type: ignore[arg-type]
        tree = build_tree(Dl.mean(axis=0), leaves, cfg.linkage)
        cuts = choose_cuts(tree, Dl, K=cfg.window, tau=cfg.tau).cuts
        results.append(score(tree, cuts, (kind, metric)))
        if (kind, metric) == (cfg.distance_on, cfg.metric):
            check = {"tree": _same_tree(tree, coord_tree), "cuts": cuts == list(outcome.meta["cuts"])}
        if (kind, metric) == ("B", "euclidean"):  # the skew coupling is a property of B (the head's error signal)
            means = pair_means(Dl.mean(axis=0), [by_id[w] for w in leaves])
    coordinator = score(coord_tree, list(outcome.meta["cuts"]), ("coordinator", cfg.metric))
    return {"check": check, "coordinator": coordinator, "pair_means": means}, results


RELATIONS = ("same subgroup", "same task, other skew", "other task, same skew", "other task, other skew")


def pair_means(D: np.ndarray, clients: list[PlantedClient]) -> dict[str, float]:
    """Mean of ``D`` (clients in list order) over client pairs, by how the pair is related in the planted truth."""
    sums: dict[str, list[float]] = {r: [] for r in RELATIONS}
    for i, a in enumerate(clients):
        for j in range(i + 1, len(clients)):
            b = clients[j]
            same_task, same_skew = a.task == b.task, a.skew == b.skew
            rel = RELATIONS[0 if same_task and same_skew else 1 if same_task else 2 if same_skew else 3]
            sums[rel].append(float(D[i, j]))
    return {r: float(np.mean(v)) if v else float("nan") for r, v in sums.items()}


def skew_coupling(means: dict[str, float]) -> float:
    """Mean distance of other-task same-skew pairs / other-task other-skew pairs: < 1 when clients of
    different tasks are pulled together by their skew (e.g. by shared index-keyed head rows)."""
    return means["other task, same skew"] / means["other task, other skew"]


def fmt_ari(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def tables(analysed: list[tuple[RunOutcome, dict[str, Any], list[VariantResult]]]) -> str:
    out: list[str] = []
    for fed in dict.fromkeys(o.federation.name for o, _, _ in analysed):
        rows = [(o, c, r) for o, c, r in analysed if o.federation.name == fed]
        f = rows[0][0].federation
        n_sub = f.subgroups_per_task * len(f.tasks)
        out.append(
            f"**{fed}** — {f.clients} clients: {', '.join(f.tasks)} x {f.subgroups_per_task} skew subgroups x "
            f"{f.clients_per_subgroup} clients ({'plain JSONL via data.train_path/val_path + data.task' if f.layout == 'jsonl' else 'partition dirs'})\n"
        )
        out.append(
            f"| labelling | head | distance | task ARI @{len(f.tasks)} | subgroup ARI @{n_sub} | per-layer cuts (shallow -> deep) |"
        )
        out.append("|---|---|---|---|---|---|")
        for o, c, results in rows:
            lab = "index-keyed (BEFORE)" if o.labelling == "index" else "name-keyed"
            for r in results:
                dist = f"{r.variant[0]} {r.variant[1]}"
                if r.variant == DEFAULT_VARIANT:
                    ok = c["check"].get("tree") and c["check"].get("cuts")
                    dist = f"**{dist}** (default{'; = coordinator' if ok else '; != coordinator!'})"
                out.append(f"| {lab} | {o.head_mode} | {dist} | {fmt_ari(r.task_ari)} | {fmt_ari(r.subgroup_ari)} | {r.cuts} |")
        out.append("")
        out.append(f"Mean B euclidean distance (the tree's global D) by pair relation, **{fed}**:\n")
        out.append("| labelling | head | " + " | ".join(RELATIONS) + " | skew coupling |")
        out.append("|---|---|" + "---|" * (len(RELATIONS) + 1))
        for o, c, _ in rows:
            lab = "index-keyed (BEFORE)" if o.labelling == "index" else "name-keyed"
            pm = c["pair_means"]
            cells = [fmt_ari(pm[r]) if pm[r] == pm[r] else "—" for r in RELATIONS]
            coupling = skew_coupling(pm)
            out.append(
                f"| {lab} | {o.head_mode} | " + " | ".join(cells) + f" | {fmt_ari(coupling) if coupling == coupling else '—'} |"
            )
        out.append("")
    return "\n".join(out)


def _describe(groups: list[list[str]], clients: list[PlantedClient]) -> str:
    """A split as its groups of (task, skew) members, e.g. '{wordnet_pos/s0 x2, fortunes/s0 x2} | {...}'."""
    by_id = {c.client_id: c for c in clients}
    parts = []
    for group in groups:
        counts: dict[str, int] = {}
        for w in group:
            key = f"{by_id[w].task}/s{by_id[w].skew}"
            counts[key] = counts.get(key, 0) + 1
        parts.append("{" + ", ".join(f"{k} x{n}" for k, n in counts.items()) + "}")
    return " | ".join(parts)


def goal_misses(analysed: list[tuple[RunOutcome, dict[str, Any], list[VariantResult]]]) -> list[str]:
    """Goal: ARI 1.0 (task and subgroup) for the defaults: name-keyed, head local, the default distance (the coordinator's tree)."""
    misses = []
    for o, c, _ in analysed:
        if o.labelling != "name" or o.head_mode != "local":
            continue
        r = c["coordinator"]
        for what, ari in (("task", r.task_ari), ("subgroup", r.subgroup_ari)):
            if ari is not None and ari < 1.0:
                pm = c["pair_means"]
                misses.append(
                    f"{o.federation.name}: {what} ARI {ari:.2f}, top split {_describe(r.top_split, o.clients)}; mean distance "
                    f"same task/other skew {pm['same task, other skew']:.3f} vs other task {pm['other task, same skew']:.3f} "
                    f"(same skew) / {pm['other task, other skew']:.3f} (other skew)"
                )
    return misses
