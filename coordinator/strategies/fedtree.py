"""FedTreeLoRA (arXiv 2603.13282): one global client tree, cut per layer; mixed experts.

Trains: during `warmup_rounds`, each worker's own A and B (local only); afterwards its cluster
expert (A, B) and a per-layer mixing logit theta (local, never uploaded).
Uploads: nothing during warmup except at its last round, where every worker uploads all its A
and B; afterwards its updated cluster expert, every layer.
Uses: per layer l, the example-weighted mean A and mean B of its cluster under the cut c*_l of
the global tree (cluster expert) mixed by lambda = sigmoid(theta) with the mean over all other
workers (external expert; none and lambda = 1 where the layer has one cluster).
The tree, cuts and clusters are rebuilt after warmup (and every `rebuild_every` rounds if set, or
when an operator asks: `request_rebuild`), over the workers that upload in that round; `tree_view`
shows them.
Late joiners (`fedtree.late_join: place`, beyond the paper): a worker with no place in the tree
(it joined after the build, or missed the build round) pulls nothing and uploads nothing while
it trains locally, as the original workers did in warmup, until it has pushed
`late_warmup_rounds` rounds (its warmup pushes before the build count); in the last of them it
uploads all its A and B, and at that round's close it is placed in the tree without moving
anyone (coordinator/tree/placement.py): the nested path of the cuts' clusters nearest to it
(average linkage, each layer under its own distance), and a new branch of its own (its upload is
that branch's first expert) from the first layer where it is farther than `late_threshold` x
that cluster's merge distance at the cut (its distance to the nearest other cluster). The
members' build-round uploads it is measured against are kept on disk (coordinator/kept.py), one
layer of every member read at a time; a placed joiner's upload joins them. From the next round it
pulls and pushes like every member.
Departures: an evicted or lost worker pushes nothing, so it stops contributing; a cluster nobody
pushes to keeps its last expert; an evicted worker no longer counts in placements.
Export from the coordinator: the rank-2r mix of the worker's cluster and external experts with the
lambdas of its latest push; refused with `fedtree.personal` (the personal expert never leaves it).
Head (head_mode cluster): averaged per label inside the worker's cluster of the DEEPEST layer
(flat: its one cluster; indep: its deepest layer's), from the first round after the tree is built;
during warmup, including the build round, and for workers outside the tree (a late joiner until
it is placed) it stays local. A placement keeps the group's name: its members' head rows go on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from common.chunking import Role
from common.errors import FailedPrecondition
from common.lora import concat_experts
from common.schema import UploadSpec
from coordinator.kept import MemberUploads, members_dir
from coordinator.spill import Uploads
from coordinator.strategies.base import EXPORT_FROM_WORKER, Download, LayerTensors, PersonalAdapter, Strategy, TreeView
from coordinator.tree import ClientTree, ClusterSums, build_tree, choose_cuts
from coordinator.tree.client_distance import client_layer_distances
from coordinator.tree.placement import LayerPlace, Placement, PlacementMode, choose_places
from coordinator.tree.render import dendrogram, layer_groups

log = logging.getLogger(__name__)
Tensors = dict[str, torch.Tensor]


class FedTree(Strategy):
    name = "fedtree"
    # Whether workers also get the external (rest-of-world) expert; clustered baselines do not.
    mixes_external: ClassVar[bool] = True
    # How a late joiner is placed: per layer inside its shallower layer's cluster (the tree's
    # nesting), per layer independently (indep), or once on the global distance, the same
    # cluster in every layer (flat).
    placement: ClassVar[PlacementMode] = "nested"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cfg = self.run.fedtree
        self.tree: ClientTree | None = None
        self.cuts: list[int] = []
        self.built_round = 0
        # layer -> worker -> cluster id under that layer's cut
        self.assignment: dict[int, dict[str, int]] = {}
        self.experts = ClusterSums()
        self._pending = ClusterSums()
        self._uploads = Uploads(self.spill_dir)  # per-worker uploads of a (re)build round, or of late joiners to place
        self.rebuild_round: int | None = None  # an operator asked for a rebuild from this round's uploads
        self.members = MemberUploads(members_dir(self.spill_dir))  # the build round's uploads, kept for placements
        self.placements: dict[str, Placement] = {}  # late joiners placed in the current tree
        self.local_rounds: dict[str, int] = {}  # pushes of each worker while it had no place in the tree
        self.departed: set[str] = set()  # evicted: never again in a placement's distances
        self._version = 0  # bumped when the assignment changes (build, placement)
        self._head_names: tuple[int, dict[str, str]] = (-1, {})  # (version, worker -> head group)

    # -- phases ------------------------------------------------------------------------------
    def _builds_tree(self, round: int) -> bool:
        warm = self.cfg.warmup_rounds
        every = self.cfg.rebuild_every
        requested = self.rebuild_round is not None and round == max(self.rebuild_round, warm)
        return requested or round == warm or (every > 0 and round > warm and (round - warm) % every == 0)

    def request_rebuild(self, round: int) -> None:
        self.rebuild_round = round

    def evicted(self, worker_id: str) -> None:
        self.departed.add(worker_id)
        self.local_rounds.pop(worker_id, None)

    def tree_view(self) -> TreeView:
        return TreeView(
            built=bool(self.assignment),
            built_round=self.built_round,
            tree=self.tree,
            cuts=list(self.cuts),
            clusters=self.clusters() if self.assignment else [],
            rebuild_pending=self.rebuild_round is not None,
            warmup_rounds=self.cfg.warmup_rounds,
            placements=dict(self.placements),
            late_pending={w: n for w, n in self.local_rounds.items() if self._late(w)} if self._placing() else {},
            late_warmup_rounds=self.late_warmup_rounds,
        )

    # -- late joiners ----------------------------------------------------------------------
    @property
    def late_warmup_rounds(self) -> int:
        return self.cfg.late_warmup_rounds or self.cfg.warmup_rounds

    def _placing(self) -> bool:
        """Late joiners are placed (not given everyone's mean) once a tree exists."""
        return self.cfg.late_join == "place" and bool(self.assignment)

    def _late(self, worker_id: str) -> bool:
        """The tree exists and the worker has no place in it (yet)."""
        return bool(self.assignment) and worker_id not in self.assignment[self.all_layers()[0]]

    def upload_spec(self, worker_id: str, round: int) -> UploadSpec:
        if round < self.cfg.warmup_rounds:
            return UploadSpec(layers=(), lora_a=False, lora_b=False)
        if self._placing() and self._late(worker_id) and self.local_rounds.get(worker_id, 0) + 1 < self.late_warmup_rounds:
            return UploadSpec(layers=(), lora_a=False, lora_b=False)  # its own warmup: local only
        return UploadSpec(self.all_layers(), lora_a=True, lora_b=True)

    def head_group(self, worker_id: str, round: int) -> str | None:
        """The members of the worker's deepest-layer cluster, named by a digest of their ids, so
        that a rebuild that keeps a cluster keeps its head rows and one that changes it starts anew."""
        if not self.assignment or round <= self.cfg.warmup_rounds:
            return None
        if self._head_names[0] != self._version:  # once per (re)built or extended assignment, not per call
            deepest = self.assignment.get(self.all_layers()[-1], {})
            members: dict[int, list[str]] = {}
            for worker, cluster in sorted(deepest.items()):
                if worker not in self.placements:
                    members.setdefault(cluster, []).append(worker)
            names = {c: "tree-" + hashlib.sha256("\n".join(ws).encode()).hexdigest()[:16] for c, ws in members.items()}
            # a placement keeps its cluster's name; a new branch is named by its first joiner
            for worker, _ in sorted(self.placements.items(), key=lambda item: (item[1].round, item[0])):
                key = f"late\n{self.built_round}\n{worker}"
                names.setdefault(deepest[worker], "tree-" + hashlib.sha256(key.encode()).hexdigest()[:16])
            self._head_names = (self._version, {w: names[c] for w, c in deepest.items()})
        return self._head_names[1].get(worker_id)  # None: no place in the tree (yet)

    def downloads(self, worker_id: str, round: int) -> list[Download]:
        if not self.assignment or round <= self.cfg.warmup_rounds:
            return []
        if self._placing() and self._late(worker_id):
            return []  # its own warmup, then its placement round: it keeps its own adapter
        out: list[Download] = []
        for layer in self.all_layers():
            cut = self.cuts[layer]
            cluster = self.assignment[layer].get(worker_id)
            if cluster is None:  # late_join mean: joined after the tree was built, it gets everyone's mean
                out.append(Download(layer, Role.CLUSTER, f"all@{layer}", self.experts.total_mean(layer)))
                continue
            out.append(Download(layer, Role.CLUSTER, f"c{cut}.{cluster}", self.experts.cluster_mean(layer, cluster)))
            external = self.experts.external_mean(layer, cluster) if self.mixes_external and not self.cfg.cluster_only else None
            if external is not None:
                out.append(Download(layer, Role.EXTERNAL, f"x{cut}.{cluster}", external))
        return out

    def accumulate(self, worker_id: str, round: int, update: LayerTensors, weight: float) -> None:
        late = not self.assignment or self._late(worker_id)
        if late:  # its warmup (before the build or its own, after it) counts towards its placement
            self.local_rounds[worker_id] = self.local_rounds.get(worker_id, 0) + 1
        if self._builds_tree(round):
            if update:  # a late joiner still in its own warmup pushes nothing to build from
                self._uploads.put(worker_id, update, weight)
            return
        if round <= self.cfg.warmup_rounds:
            return
        if late:  # not in the tree: its upload shapes no expert; with late_join place it is placed at the close
            if update and self._placing():
                self._uploads.put(worker_id, update, weight)
            return
        for layer, tensors in update.items():
            cluster = self.assignment.get(layer, {}).get(worker_id)
            if cluster is not None:
                self.robust.add(self._pending.add, layer, cluster, tensors, weight)

    def close_round(self, round: int) -> None:
        self.robust.flush(self._pending.add)
        if self._builds_tree(round) and len(self._uploads) >= 1:
            self._build(round)
            self.rebuild_round = None
        else:
            if self._pending.total_weights:
                # clusters nobody pushed to this round (all their members gone) keep their previous expert
                for layer, clusters in self.experts.weights.items():
                    for cluster, weight in clusters.items():
                        if cluster not in self._pending.weights.get(layer, {}):
                            self._pending.add(layer, cluster, self.experts.cluster_mean(layer, cluster), weight)
                self.experts = self._pending
            for worker in self._uploads.workers():  # in id order: a joiner may join the branch of one before it
                self._place(worker, round)
        self._pending = ClusterSums()
        self._uploads.clear()

    def personalised(self, worker_id: str, round: int, metrics: Mapping[str, float]) -> PersonalAdapter:
        """Cluster experts alone (flat, indep, cluster_only): as they are. Mixed with external
        experts: the exact rank-2r LoRA of lam * cluster + (1 - lam) * external with the lambdas
        the worker reported (0.5 where it reported none; 1 in a layer without external expert)."""
        if self.cfg.personal and self.mixes_external:  # flat / indep workers have no personal expert
            raise FailedPrecondition(
                "this run keeps a personal expert on each worker (fedtree.personal) that the coordinator never sees: "
                + EXPORT_FROM_WORKER
            )
        pulled: dict[int, dict[Role, Tensors]] = {}
        for item in self.downloads(worker_id, round):
            pulled.setdefault(item.layer, {})[item.role] = item.tensors
        if not any(Role.EXTERNAL in roles for roles in pulled.values()):
            return super().personalised(worker_id, round, metrics)
        lambdas = lambdas_in(metrics)
        out: dict[int, Tensors] = {}
        for layer, roles in sorted(pulled.items()):
            cluster = roles[Role.CLUSTER]
            external = roles.get(Role.EXTERNAL)
            lam = lambdas.get(layer, 0.5) if external is not None else 1.0
            zeros = {name: torch.zeros_like(t) for name, t in cluster.items()}
            out[layer] = concat_experts(cluster, external if external is not None else zeros, lam)
        return PersonalAdapter(out, 2)

    # -- the tree ----------------------------------------------------------------------------
    def _build(self, round: int) -> None:
        workers = self._uploads.workers()
        # one layer of every worker's B at a time: memory is N x one layer, not N x the adapter
        Dl = np.stack(
            [self._distances([self._uploads.layer(w, layer) for w in workers]) for layer in self._uploads.layers(workers[0])]
        )
        labels = self._assign(workers, Dl)
        before = set(self.assignment.get(self.all_layers()[0], {})) - self.departed
        self.built_round = round
        self.cuts = [int(lab.max()) + 1 for lab in labels]
        self.assignment = {
            layer: dict(zip(workers, (int(c) for c in labels[i]), strict=True)) for i, layer in enumerate(self.all_layers())
        }
        self.experts = ClusterSums()
        for worker in workers:  # one worker's upload in memory at a time, its file read once
            weight = self._uploads.weight(worker)
            for layer, tensors in self._uploads.get(worker).items():
                self.robust.add(self.experts.add, layer, self.assignment[layer][worker], tensors, weight)
        self.robust.flush(self.experts.add)
        self.members.keep_build(round, self._uploads)  # moved out of the round's spill, for placements
        self.placements = {}
        self.local_rounds = {w: n for w, n in self.local_rounds.items() if w not in workers}
        for worker in before - set(workers):  # in the old tree, absent from this build: placed again when it pushes next
            self.local_rounds[worker] = max(self.local_rounds.get(worker, 0), self.late_warmup_rounds - 1)
        self._version += 1
        log.info("[%s] clusters built after round %d over %d workers; per layer %s", self.name, round, len(workers), self.cuts)
        for line in (dendrogram(self.tree) if self.tree else []) + layer_groups(self.clusters()):
            log.info("[%s] %s", self.name, line)

    # -- placing a late joiner ---------------------------------------------------------------
    def _member_distances(self, worker: str, members: list[str]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Per layer (shallow to deep): the joiner's distances to the members (N,) and theirs (N, N)
        under the layer distance, one layer of every member in memory at a time."""
        for layer in self.all_layers():
            Dl = self._distances([self._uploads.layer(worker, layer)] + [self.members.layer(m, layer) for m in members])
            yield layer, Dl[0, 1:], Dl[1:, 1:]

    def _choose(self, worker: str, members: list[str]) -> list[LayerPlace]:
        """Its place per layer among the members' clusters (coordinator/tree/placement.py; the
        cluster is the one it was measured against where it branches off)."""
        labels = [np.array([self.assignment[layer][m] for m in members]) for layer in self.all_layers()]
        _, d, D = zip(*self._member_distances(worker, members), strict=True)
        return choose_places(list(d), list(D), labels, self.cfg.late_threshold, self.placement)

    def _place(self, worker: str, round: int) -> None:
        """Place a late joiner from the upload of its last late-warmup round, moving nobody."""
        layers = self.all_layers()
        members = [m for m in self.members.workers() if m not in self.departed and m in self.assignment[layers[0]]]
        if members:
            chosen = self._choose(worker, members)
        else:  # nobody to measure against (e.g. every member evicted): a branch of its own
            chosen = [LayerPlace(-1, -1, float("inf"), float("inf"), True)] * len(layers)
        weight = self._uploads.weight(worker)
        placed: list[LayerPlace] = []
        for layer, where in zip(layers, chosen, strict=True):
            cluster = where.cluster
            if where.new_branch:  # its own cluster: its upload is the branch's first expert
                cluster = max(self.assignment[layer].values(), default=-1) + 1
                self.experts.add(layer, cluster, self._uploads.layer(worker, layer), weight)
            self.assignment[layer][worker] = cluster
            placed.append(LayerPlace(cluster, where.nearest, where.distance, where.threshold, where.new_branch))
        placement = Placement(round, tuple(placed))
        self.placements[worker] = placement
        self.members.add(worker, self._uploads)  # later joiners are measured against it too
        self.local_rounds.pop(worker, None)
        self._version += 1
        branch = placement.branch_from
        log.info(
            "[%s] late joiner %s placed after round %d: clusters per layer %s, distance %.4g%s",
            self.name,
            worker,
            round,
            [p.cluster for p in placed],
            placement.distance,
            "" if branch is None else f", its own branch from layer {layers[branch]}",
        )

    def _distances(self, layer_of: list[dict[str, torch.Tensor]]) -> np.ndarray:
        """One layer's client distances (N, N) under `fedtree.metric` on `fedtree.distance_on`'s factor."""
        return client_layer_distances(layer_of, self.cfg.metric, self.cfg.distance_on)

    def _assign(self, workers: list[str], Dl: np.ndarray) -> list[np.ndarray]:
        """Cluster labels per layer (shallow to deep): the global tree cut per layer."""
        tree = build_tree(Dl.mean(axis=0), workers, self.cfg.linkage)
        if self.cfg.fixed_k is not None:
            cuts = [min(self.cfg.fixed_k, len(workers))] * len(Dl)
        else:
            cuts = choose_cuts(tree, Dl, K=self.cfg.window, tau=self.cfg.tau).cuts
        self.tree = tree
        return [tree.partition(c) for c in cuts]

    def clusters(self) -> list[list[list[str]]]:
        """Per layer, the clusters as sorted lists of worker ids (in cluster id order)."""
        out = []
        for layer in self.all_layers():
            groups: dict[int, list[str]] = {}
            for worker, cluster in sorted(self.assignment.get(layer, {}).items()):
                groups.setdefault(cluster, []).append(worker)
            out.append([groups[c] for c in sorted(groups)])
        return out

    # -- persistence -------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        return {
            f"cluster/{layer}/{cluster}/{name}": tensor
            for layer, clusters in self.experts.weights.items()
            for cluster in clusters
            for name, tensor in self.experts.cluster_mean(layer, cluster).items()
        }

    def meta(self) -> dict[str, Any]:
        return {
            "tree": self.tree.to_dict() if self.tree else None,
            "cuts": self.cuts,
            "built_round": self.built_round,
            "assignment": {str(layer): a for layer, a in self.assignment.items()},
            "weights": {str(layer): {str(c): w for c, w in ws.items()} for layer, ws in self.experts.weights.items()},
            "clusters": self.clusters(),
            "placements": {w: p.to_dict() for w, p in sorted(self.placements.items())},
            "local_rounds": dict(sorted(self.local_rounds.items())),
            "departed": sorted(self.departed),
            "members": self.members.meta(),  # where the build round's uploads are kept, and whose
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
        meta = meta or {}
        self.local_rounds = {str(w): int(n) for w, n in meta.get("local_rounds", {}).items()}
        self.departed = {str(w) for w in meta.get("departed", [])}
        if not meta.get("assignment"):
            return
        self.placements = {str(w): Placement.from_dict(p) for w, p in meta.get("placements", {}).items()}
        if meta.get("members"):
            self.members = MemberUploads.load(members_dir(self.spill_dir), meta["members"])
        self._version += 1
        self.tree = ClientTree.from_dict(meta["tree"]) if meta.get("tree") else None
        self.cuts = [int(c) for c in meta["cuts"]]
        self.built_round = int(meta["built_round"])
        self.assignment = {int(layer): {w: int(c) for w, c in a.items()} for layer, a in meta["assignment"].items()}
        means: dict[tuple[int, int], Tensors] = {}
        for key, tensor in tensors.items():
            _, layer_id, cluster_id, name = key.split("/", 3)
            means.setdefault((int(layer_id), int(cluster_id)), {})[name] = tensor
        self.experts = ClusterSums()
        for (layer, cluster), mean in sorted(means.items()):
            self.experts.add(layer, cluster, mean, float(meta["weights"][str(layer)][str(cluster)]))


def lambdas_in(metrics: Mapping[str, float]) -> dict[int, float]:
    """Per-layer lambdas a worker reports with its push as metrics `lambda_<layer>`."""
    return {int(k.split("_", 1)[1]): v for k, v in metrics.items() if k.startswith("lambda_")}
