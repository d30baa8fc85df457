"""The operator's view of a running coordinator, as admin protobuf messages.

Pure reads and operator actions over the engine; the gRPC Admin servicer and the HTTP
dashboard both call this, so the JSON of the dashboard equals MessageToJson of the RPCs.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

from coordinator.engine import RoundEngine
from coordinator.export import lambdas_in, write_adapter
from proto.fedtree.v1 import admin_pb2 as apb

FILE_CHUNK = 1 << 20
_STATES = {"lost": apb.WORKER_STATE_LOST, "evicted": apb.WORKER_STATE_EVICTED}


class AdminView:
    def __init__(self, engine: RoundEngine) -> None:
        self.engine = engine

    # -- reads -----------------------------------------------------------------------------
    def tree(self) -> apb.GetTreeResponse:
        engine = self.engine
        with engine._cond:
            strategy = engine.strategy
            out = apb.GetTreeResponse(strategy=engine.run.strategy)
            assignment = getattr(strategy, "assignment", None)
            if not assignment:
                return out
            tree = getattr(strategy, "tree", None)
            out.built, out.built_round = True, int(getattr(strategy, "built_round", 0))
            out.rebuild_pending = getattr(strategy, "rebuild_round", None) is not None
            if tree is not None:
                out.linkage = tree.linkage
                out.leaves.extend(tree.leaves)
                out.merges.extend(apb.Merge(left=m.left, right=m.right, distance=m.distance, size=m.size) for m in tree.merges)
            lambdas = self._lambdas()
            for layer, groups in enumerate(strategy.clusters()):  # type: ignore[union-attr]
                cut = apb.LayerCut(layer=layer, cluster_count=len(groups), clusters=[apb.Cluster(workers=g) for g in groups])
                for worker, per_layer in lambdas.items():
                    if layer in per_layer:
                        cut.lambdas[worker] = per_layer[layer]
                out.layers.append(cut)
            return out

    def _lambdas(self) -> dict[str, dict[int, float]]:
        return {w: lambdas_in(info.last_metrics) for w, info in self.engine.workers.items()}

    def workers(self) -> apb.ListWorkersResponse:
        engine = self.engine
        with engine._cond:
            cur = engine.current
            out = apb.ListWorkersResponse()
            for w, info in sorted(engine.workers.items()):
                state = _STATES.get(info.activity, apb.WORKER_STATE_IDLE)
                if info.activity not in ("lost", "evicted"):  # busy = owes the open round its push
                    busy = cur is not None and w in cur.participants and w not in cur.pushed
                    state = apb.WORKER_STATE_TRAINING if busy else apb.WORKER_STATE_IDLE
                out.workers.append(
                    apb.WorkerInfo(
                        worker_id=w,
                        address=info.address,
                        state=state,
                        activity=info.activity,
                        last_heartbeat_unix=info.last_seen,
                        rounds_done=info.rounds_done,
                        bytes_sent=info.bytes_sent,
                        bytes_received=info.bytes_received,
                        last_metrics=info.last_metrics,
                        num_train_examples=info.num_train_examples,
                    )
                )
            return out

    def status(self) -> apb.GetStatusResponse:
        engine = self.engine
        with engine._cond:
            cur = engine.current
            out = apb.GetStatusResponse(
                run_id=engine.run_id,
                strategy=engine.run.strategy,
                last_closed_round=engine.last_closed,
                rounds=engine.run.rounds,
                workers=len(engine.workers),
            )
            if cur is not None:
                out.current_round, out.pushes, out.deadline_unix = cur.round, len(cur.pushed), cur.deadline
                quorum = engine.run.quorum
                out.quorum = len(cur.participants) if quorum is None else min(quorum, len(cur.participants))
            out.phase = self._phase()
            return out

    def _phase(self) -> apb.Phase.ValueType:
        engine = self.engine
        if engine.done:
            return apb.PHASE_DONE
        if engine.paused:
            return apb.PHASE_PAUSED
        cur = engine.current
        if cur is None:
            return apb.PHASE_WAITING
        if cur.evaluating:
            return apb.PHASE_EVALUATING
        warmup = engine.run.fedtree.warmup_rounds if hasattr(engine.strategy, "assignment") else 0
        return apb.PHASE_WARMUP if cur.round <= warmup else apb.PHASE_TRAINING

    def rounds(self) -> apb.GetRoundsResponse:
        store = self.engine.store
        evals = store.evaluations()
        out = apb.GetRoundsResponse()
        for r in store.rounds():
            info = apb.RoundInfo(
                round=r["round"],
                participants=r["participants"],
                started_unix=r["started_at"],
                closed_unix=r["closed_at"],
                duration_s=r["closed_at"] - r["started_at"],
                bytes=r["bytes"],
                pushes=r["pushes"],
            )
            per_worker = evals.get(r["round"], {})
            names = sorted({k for m in per_worker.values() for k in m})
            for name in names:
                values = [m[name] for m in per_worker.values() if name in m]
                info.mean_metrics[name] = statistics.fmean(values)
            info.metric = "rouge1" if self.engine.run.task == "causal_lm" else "accuracy"
            for worker, metrics in per_worker.items():
                if "accuracy" in metrics:
                    info.accuracy[worker] = metrics["accuracy"]
                if info.metric in metrics:
                    info.metric_per_worker[worker] = metrics[info.metric]
            out.rounds.append(info)
        return out

    def export(self, worker_id: str) -> Iterator[apb.FileChunk]:
        with tempfile.TemporaryDirectory(prefix="fedtree-export-") as tmp, self.engine._cond:
            write_adapter(self.engine, worker_id, Path(tmp))
            files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
            blobs = [(p.relative_to(tmp).as_posix(), p.read_bytes()) for p in files]
        for path, data in blobs:
            total = max(1, -(-len(data) // FILE_CHUNK))
            for i in range(total):
                yield apb.FileChunk(path=path, index=i, total=total, data=data[i * FILE_CHUNK : (i + 1) * FILE_CHUNK])

    # -- actions ---------------------------------------------------------------------------
    def evict(self, worker_id: str) -> None:
        self.engine.evict(worker_id)

    def pause(self, paused: bool) -> None:
        self.engine.set_paused(paused)

    def rebuild(self) -> int:
        return self.engine.request_rebuild()
