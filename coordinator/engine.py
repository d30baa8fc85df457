"""The round engine: joins, tasks, round opening/closing, push commits and checkpoints.

Pure logic over a StateStore and a Strategy, thread-safe behind one condition variable; the
gRPC servicer only decodes, calls this and encodes. A round opens when `min_workers` have joined
(participants = every worker joined and not lost at that moment), closes when `quorum` of them
have pushed (default all) or its deadline passes, and is checkpointed before the next opens
(coordinator/checkpointer.py: with `background_checkpoints`, after the closing push is
acknowledged, but still before the next round opens).
After the last round, every participant gets one EVALUATE task, then DONE.

A push is admitted once (`begin_push`: the duplicate ack, or a `PushTicket` carrying what it
must carry) before its bytes are read, and folded by `commit`, which re-checks only what can
have changed while they arrived.

With `run.train.head_mode: cluster` a push may carry the classifier head's label rows (the
HEAD_LAYER blob, common/schema.py): they go to the strategy's head sums, not its adapter sums.
Their length (hidden + 1, the run's head width) is fixed by the first accepted head push and
persisted in the state store; a later push of another length is rejected before anything of it
is recorded.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace

from common.config import CoordinatorConfig, RunConfig
from common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from common.schema import HEAD_LAYER, Schema, select, validate_head
from common.types import JoinRequest, PushHeader, PushResult, Task, TaskKind
from common.version import check_compatible, check_digest
from coordinator.checkpointer import Checkpoint, Checkpointer
from coordinator.engine_types import REPORTED_ACTIVITIES, EngineSnapshot, PushTicket, RoundInfo, WorkerInfo
from coordinator.spill import discard_spill
from coordinator.state import StateStore
from coordinator.state_view import restore_strategy
from coordinator.strategies import Download, Strategy, create_strategy
from coordinator.strategies.base import LayerTensors, PersonalAdapter

log = logging.getLogger(__name__)


class RoundEngine:
    def __init__(
        self,
        config: CoordinatorConfig,
        store: StateStore,
        clock: Callable[[], float] = time.time,
        background_checkpoints: bool = False,
    ) -> None:
        self.config = config
        self.run: RunConfig = config.run
        self.store = store
        self.clock = clock
        self._cond = threading.Condition()
        # inline (the default: what a test reads after a push is on disk) or after the ack (the server)
        self.checkpointer = Checkpointer(store, background=background_checkpoints, on_durable=self._checkpointed)
        self.workers: dict[str, WorkerInfo] = {}
        self.current: RoundInfo | None = None
        self.done = False
        self.run_id: str = store.get("run_id") or uuid.uuid4().hex[:12]
        self.fingerprint: str | None = store.get("fingerprint") or config.expected_fingerprint
        self.schema: Schema | None = store.get_schema()
        self.head_width: int | None = store.get("head_width")  # hidden + 1, fixed by the first head push
        # uploads a strategy keeps whole for a round (the tree build) wait on disk, not in memory
        self.spill_dir = config.state_dir / "spill"
        # Reading only: whoever constructs an engine (a test, a coordinator about to serve) changes
        # nothing in the state directory until resume() takes it over.
        self.strategy: Strategy | None
        self.last_closed, self.strategy = restore_strategy(store, self.run, self.schema, self.spill_dir)
        self._resumed = False
        counters = store.get("worker_counters") or {}
        for worker_id, n in store.workers().items():
            info = WorkerInfo(worker_id, n, last_seen=0.0, activity="lost")
            info.restore_counters(counters.get(worker_id, {}))
            self.workers[worker_id] = info
        self.done = self.last_closed >= self.run.rounds and bool(store.get("evaluated"))
        self.paused = bool(store.get("paused"))
        self._waiting_logged: int | None = None  # the live-worker count last logged while waiting
        for worker_id in store.get("evicted") or []:
            if worker_id in self.workers:
                self.workers[worker_id].activity = "evicted"
            if self.strategy is not None:
                self.strategy.evicted(worker_id)

    def resume(self) -> None:
        """Take the state directory over for serving: the one start-up step that writes. Records
        the run id and config, and forgets the pushes and spilled uploads of the round that was
        open when the previous process died (their sums died with it: those pushes are
        re-requested). Only the serving coordinator calls this; readers use StateView."""
        with self._cond:
            self.store.put(run_id=self.run_id, config=self.config.model_dump(mode="json"))
            discard_spill(self.spill_dir)
            dropped = self.store.discard_pushes(self.last_closed + 1)
            self._resumed = True
            log.info(
                "[Engine] resumed run %s after round %d (%d unclosed pushes of round %d will be re-requested)",
                self.run_id,
                self.last_closed,
                dropped,
                self.last_closed + 1,
            )

    # -- joins and liveness --------------------------------------------------------------------
    def join(self, req: JoinRequest, address: str = "") -> tuple[str, RunConfig, int]:
        if not req.worker_id:
            raise InvalidArgument("worker_id must not be empty")
        if not req.schema:
            raise InvalidArgument("join carries no adapter schema")
        check_compatible(req.worker_id, req.version)
        check_digest(req.worker_id, req.version, self.run.digest)
        with self._cond:
            if req.worker_id in self.workers and self.workers[req.worker_id].activity == "evicted":
                raise PermissionDenied(f"worker {req.worker_id} was evicted by an operator")
            if self.fingerprint is not None and req.fingerprint != self.fingerprint:
                raise FailedPrecondition(
                    f"model fingerprint {req.fingerprint[:16]} of worker {req.worker_id} differs from the run's "
                    f"{self.fingerprint[:16]}: same base model, LoRA config and seed are required"
                )
            if self.schema is not None and req.schema != self.schema:
                raise FailedPrecondition(f"adapter schema of worker {req.worker_id} differs from the run's")
            if self.fingerprint is None or self.schema is None:
                self.fingerprint, self.schema = req.fingerprint, req.schema
                self.store.put(fingerprint=req.fingerprint, layer_prefix=req.layer_prefix)
                self.store.put_schema(req.schema)
                self.strategy = create_strategy(self.run, req.schema, self.spill_dir)
                log.info(
                    "[Engine] run %s fixed by %s: %d layers, fingerprint %s",
                    self.run_id,
                    req.worker_id,
                    len(req.schema),
                    req.fingerprint[:16],
                )
            self.store.upsert_worker(req.worker_id, req.num_train_examples)
            info = self.workers.get(req.worker_id)
            if info is None:
                self.workers[req.worker_id] = WorkerInfo(req.worker_id, req.num_train_examples, self.clock())
            else:
                info.num_train_examples, info.last_seen, info.activity = req.num_train_examples, self.clock(), "joined"
            self.workers[req.worker_id].address = address
            log.info("[Engine.Join] worker=%s examples=%d (%d workers)", req.worker_id, req.num_train_examples, len(self.workers))
            self._maybe_advance()
            self._cond.notify_all()
            return self.run_id, self.run, self.current.round if self.current else self.last_closed

    def heartbeat(self, worker_id: str, activity: str) -> int:
        with self._cond:
            info = self._worker(worker_id)
            info.activity = REPORTED_ACTIVITIES.get(activity, info.activity)
            return self.current.round if self.current else self.last_closed

    def _worker(self, worker_id: str) -> WorkerInfo:
        info = self.workers.get(worker_id)
        if info is None:
            raise NotFound(f"unknown worker '{worker_id}': call Join first")
        if info.activity == "evicted":
            raise PermissionDenied(f"worker {worker_id} was evicted by an operator")
        info.last_seen = self.clock()
        if info.activity == "lost":  # it came back (e.g. after our restart or a network cut)
            info.activity = "idle"
        return info

    # -- tasks ---------------------------------------------------------------------------------
    def get_task(self, worker_id: str, wait_s: float) -> Task:
        """Long-poll: return at once when there is work, else WAIT after up to `wait_s`."""
        end = self.clock() + min(max(wait_s, 0.0), self.config.long_poll_s)
        with self._cond:
            while True:
                self._worker(worker_id)
                self._maybe_advance()
                task = self._task_for(worker_id)
                remaining = end - self.clock()
                if task.kind != TaskKind.WAIT or remaining <= 0:
                    return task
                self._cond.wait(timeout=min(remaining, 1.0))

    def _task_for(self, worker_id: str) -> Task:
        if self.done:
            return Task(TaskKind.DONE)
        cur = self.current
        if cur is None or worker_id not in cur.participants or worker_id in cur.pushed:
            return Task(TaskKind.WAIT, cur.round if cur else self.last_closed)
        if cur.evaluating:
            return Task(TaskKind.EVALUATE, cur.round, cur.deadline)
        assert self.strategy is not None
        return Task(TaskKind.TRAIN, cur.round, cur.deadline, self.strategy.push_spec(worker_id, cur.round))

    def tick(self) -> None:
        """Close rounds whose deadline passed; mark silent workers lost. Called periodically."""
        with self._cond:
            self._maybe_advance()

    def _maybe_advance(self) -> None:
        now = self.clock()
        for info in self.workers.values():
            if info.activity not in ("lost", "evicted") and now - info.last_seen > self.config.worker_lost_after_s:
                log.warning("[Engine] worker %s silent for %.0f s: lost", info.worker_id, now - info.last_seen)
                info.activity = "lost"
        cur = self.current
        if cur is not None:
            needed = len(cur.participants) if self.run.quorum is None else min(self.run.quorum, len(cur.participants))
            if len(cur.pushed) >= needed or now >= cur.deadline:
                if len(cur.pushed) < needed:
                    log.warning("[Engine] round %d deadline: closing with %d/%d pushes", cur.round, len(cur.pushed), needed)
                self._close(cur)
                cur = self.current
        if cur is None and not self.done:
            self._open_next()

    def _open_next(self) -> None:
        if not self._resumed:
            raise RuntimeError("RoundEngine.resume() was not called: only a serving engine opens rounds")
        if self.strategy is None or self.paused:
            return
        if self.checkpointer.pending is not None:  # the last closed round is not on disk yet (_checkpointed)
            return
        live = {w: i.num_train_examples for w, i in self.workers.items() if i.activity not in ("lost", "evicted")}
        if len(live) < self.run.min_workers:
            self._log_waiting(len(live))
            return
        self._waiting_logged = None
        now = self.clock()
        nxt = self.last_closed + 1
        evaluating = nxt > self.run.rounds
        self.current = RoundInfo(
            nxt if not evaluating else self.run.rounds, now, now + self.run.round_deadline_s, live, evaluating=evaluating
        )
        if not evaluating:
            self.strategy.begin_round(nxt, live)
        log.info(
            "[Engine] %s %d opened with %d participants",
            "evaluation of round" if evaluating else "round",
            self.current.round,
            len(live),
        )
        self._cond.notify_all()

    def _log_waiting(self, live: int) -> None:
        """Say once per change of the count why no round opens (an operator's first question)."""
        if self._waiting_logged == live:
            return
        self._waiting_logged = live
        nxt = self.last_closed + 1
        log.info(
            "[Engine] waiting for %d more worker(s) before round %d opens: %d/%d joined and live (run.min_workers)",
            self.run.min_workers - live,
            nxt,
            live,
            self.run.min_workers,
        )

    def _counters(self) -> dict[str, dict[str, object]]:
        return {w: info.counters() for w, info in self.workers.items()}

    def _close(self, cur: RoundInfo) -> None:
        assert self.strategy is not None
        self.current = None
        if cur.evaluating:
            self.done = True
            self.store.put(evaluated=True, worker_counters=self._counters())
            log.info("[Engine] final evaluation done: run %s complete", self.run_id)
        else:
            self.strategy.close_round(cur.round)
            self.strategy.close_heads(cur.round)
            self.last_closed = cur.round
            log.info("[Engine] round %d closed: %d/%d pushes", cur.round, len(cur.pushed), len(cur.participants))
            state, meta = (
                self.strategy.checkpoint_state(),
                {
                    "strategy_meta": self.strategy.checkpoint_meta(),
                    "worker_counters": self._counters(),
                },
            )
            self.checkpointer.write(Checkpoint(cur.round, cur.started_at, sorted(cur.pushed), state, meta))
        self._cond.notify_all()

    def _checkpointed(self) -> None:
        """A background checkpoint is on disk: the next round may open."""
        with self._cond:
            self._maybe_advance()
            self._cond.notify_all()

    # -- transfers -----------------------------------------------------------------------------
    def downloads(self, worker_id: str, round: int) -> tuple[int, list[Download]]:
        """(version, blobs): the strategy's tensors change only when a round closes, so the
        last closed round versions them (the servicer caches encoded blobs by it)."""
        with self._cond:
            self._worker(worker_id)
            self._check_round(worker_id, round)
            assert self.strategy is not None
            items = self.strategy.downloads(worker_id, round) + self.strategy.head_downloads(worker_id, round)
            return self.last_closed, items

    def begin_push(self, header: PushHeader) -> PushTicket | PushResult:
        """Admit a push before any of its bytes are read: the duplicate ack of an upload id
        already accepted (a retry after a lost ack), or the ticket to receive and `commit` it.

        Checks the worker (known, not evicted), the round (open, a participant, not the
        evaluation pass, not pushed yet) and the example count, and fixes what the push must carry.
        """
        with self._cond:
            duplicate = self._accepted(header)
            if duplicate is not None:
                return duplicate
            self._worker(header.worker_id)
            cur = self._check_round(header.worker_id, header.round)
            assert self.strategy is not None and self.schema is not None
            if cur.evaluating:
                raise FailedPrecondition(f"round {header.round} is in its evaluation pass: report metrics, do not push")
            self._not_pushed(cur, header)
            spec = self.strategy.push_spec(header.worker_id, header.round)
            if header.num_examples <= 0 and not spec.empty:
                raise InvalidArgument("num_examples must be positive")
            return PushTicket(header, spec, select(self.schema, spec) if not spec.empty else {})

    def commit(self, ticket: PushTicket, update: LayerTensors, nbytes: int) -> PushResult:
        """Fold a push received and validated under `ticket` into its round.

        Re-checks only what may have changed while the bytes arrived: the worker evicted, the
        round closed (deadline, quorum) and the same worker's push committed by a concurrent
        call (the same upload id: acknowledged as a duplicate; another: rejected).
        """
        header = ticket.header
        with self._cond:
            info = self._worker(header.worker_id)
            duplicate = self._accepted(header)
            if duplicate is not None:
                return duplicate
            cur = self.current
            if cur is None or cur.round != header.round or cur.evaluating or header.worker_id not in cur.participants:
                raise FailedPrecondition(
                    f"round {header.round} closed while the push of worker {header.worker_id} was being received "
                    f"(current: {cur.round if cur else 'none'}, last closed: {self.last_closed})"
                )
            self._not_pushed(cur, header)
            assert self.strategy is not None
            head = update.get(HEAD_LAYER)
            if head is not None:  # its length must be the run's head width: checked before anything is recorded
                where = f"push of worker {header.worker_id} round {header.round} head"
                width = validate_head(head, where, self.head_width)
            adapters = {layer: tensors for layer, tensors in update.items() if layer != HEAD_LAYER}
            weight = float(max(header.num_examples, 1))
            # Record first: if the write fails, nothing has entered the sums.
            self.store.record_push(header.round, header.worker_id, header.upload_id, header.num_examples, header.metrics, nbytes)
            self.strategy.accumulate(header.worker_id, header.round, adapters, weight)
            if head is not None:
                self.strategy.accumulate_head(header.worker_id, header.round, head, weight)
                if self.head_width is None:
                    self.head_width = width
                    self.store.put(head_width=width)
                    log.info("[Engine] head width fixed by %s: %d (hidden + 1)", header.worker_id, width)
            cur.pushed[header.worker_id] = header.upload_id
            info.round_s = self.clock() - cur.started_at
            info.rounds_done += 1
            info.bytes_received += nbytes
            info.last_metrics = dict(header.metrics)
            info.activity = "idle"
            left = cur.time_left(self.workers, self.clock())
            log.info(
                "[Engine.PushUpdate] round=%d worker=%s layers=%d bytes=%d (%d/%d pushed%s)",
                header.round,
                header.worker_id,
                len(update),
                nbytes,
                len(cur.pushed),
                len(cur.participants),
                f", ~{left:.0f} s left" if left is not None and len(cur.pushed) < len(cur.participants) else "",
            )
            self._maybe_advance()
            self._cond.notify_all()
            return PushResult(True, header.round, len(update))

    def _accepted(self, header: PushHeader) -> PushResult | None:
        """The ack of an upload id already accepted (a retry after a lost ack), else None."""
        cur = self.current
        if cur is not None and cur.round == header.round and cur.pushed.get(header.worker_id) == header.upload_id:
            return PushResult(True, header.round, 0, duplicate=True)
        if header.round <= self.last_closed:
            previous = self.store.pushes(header.round).get(header.worker_id)
            if previous is not None and previous["upload_id"] == header.upload_id:
                return PushResult(True, header.round, 0, duplicate=True)
        return None

    @staticmethod
    def _not_pushed(cur: RoundInfo, header: PushHeader) -> None:
        if header.worker_id in cur.pushed:
            raise FailedPrecondition(
                f"worker {header.worker_id} already pushed round {header.round} (upload {cur.pushed[header.worker_id]})"
            )

    def report_metrics(self, worker_id: str, round: int, metrics: dict[str, float]) -> None:
        """Metrics of the model a worker uses after `round`'s aggregation (the papers' protocol)."""
        with self._cond:
            info = self._worker(worker_id)
            if round < 1 or round > self.last_closed:
                raise FailedPrecondition(f"round {round} has no aggregate to evaluate (last closed: {self.last_closed})")
            self.store.record_evaluation(round, worker_id, metrics)
            info.last_metrics.update(metrics)
            cur = self.current
            if cur is not None and cur.evaluating and worker_id in cur.participants:
                cur.pushed[worker_id] = "evaluation"
                self._maybe_advance()
            self._cond.notify_all()

    def add_bytes_sent(self, worker_id: str, nbytes: int) -> None:
        with self._cond:
            if worker_id in self.workers:
                self.workers[worker_id].bytes_sent += nbytes

    def _check_round(self, worker_id: str, round: int) -> RoundInfo:
        """The open round, if it is `round` and `worker_id` takes part in it."""
        cur = self.current
        if cur is None or cur.round != round:
            raise FailedPrecondition(
                f"round {round} is not open (current: {cur.round if cur else 'none'}, last closed: {self.last_closed})"
            )
        if worker_id not in cur.participants:
            raise FailedPrecondition(f"worker {worker_id} is not a participant of round {round}")
        return cur

    # -- reads for the operator ----------------------------------------------------------------
    def snapshot(self) -> EngineSnapshot:
        """A consistent copy of the workers, the open round and the strategy's tree (under the lock)."""
        with self._cond:
            cur = self.current
            return EngineSnapshot(
                run_id=self.run_id,
                run=self.run,
                last_closed=self.last_closed,
                done=self.done,
                paused=self.paused,
                workers=tuple(replace(info, last_metrics=dict(info.last_metrics)) for _, info in sorted(self.workers.items())),
                current=None if cur is None else replace(cur, participants=dict(cur.participants), pushed=dict(cur.pushed)),
                tree=self.strategy.tree_view() if self.strategy is not None else None,
                remaining_s=cur.time_left(self.workers, self.clock()) if cur is not None else None,
            )

    def personalised(self, worker_id: str, metrics: Mapping[str, float]) -> PersonalAdapter:
        """The adapter `worker_id` uses after the last closed round, as far as the coordinator can
        reproduce it (`Strategy.personalised`, given the metrics of its latest push), computed
        under the lock and copied: nothing of the strategy is shared with the caller."""
        with self._cond:
            if self.strategy is None:
                raise FailedPrecondition("no worker has joined this run yet")
            if worker_id not in self.workers:
                raise NotFound(f"unknown worker '{worker_id}'")
            adapter = self.strategy.personalised(worker_id, self.last_closed + 1, metrics)
            layers = {layer: {name: t.clone() for name, t in named.items()} for layer, named in adapter.layers.items()}
            return replace(adapter, layers=layers)

    # -- operator actions ----------------------------------------------------------------------
    def evict(self, worker_id: str) -> None:
        """Drop a worker for good: out of the open round (its quorum shrinks), refused from now on."""
        with self._cond:
            if worker_id not in self.workers:
                raise NotFound(f"unknown worker '{worker_id}'")
            self.workers[worker_id].activity = "evicted"
            if self.strategy is not None:
                self.strategy.evicted(worker_id)  # e.g. fedtree: no longer in a late joiner's placement
            cur = self.current
            if cur is not None and worker_id not in cur.pushed:
                cur.participants.pop(worker_id, None)
            self.store.put(evicted=sorted(w for w, i in self.workers.items() if i.activity == "evicted"))
            log.warning("[Engine] worker %s evicted", worker_id)
            self._maybe_advance()
            self._cond.notify_all()

    def set_paused(self, paused: bool) -> None:
        """While paused no new round opens; the open round still finishes."""
        with self._cond:
            self.paused = paused
            self.store.put(paused=paused)
            log.warning("[Engine] %s", "paused" if paused else "resumed")
            self._maybe_advance()
            self._cond.notify_all()

    def request_rebuild(self) -> int:
        """Rebuild the client tree from the uploads of the next round to open; returns that round."""
        with self._cond:
            if self.strategy is None:
                raise FailedPrecondition("no worker has joined this run yet: there is no client tree to rebuild")
            round = self.current.round + 1 if self.current is not None else self.last_closed + 1
            if round > self.run.rounds:
                raise FailedPrecondition(
                    f"no round left to rebuild the tree in: the run has {self.run.rounds} rounds and "
                    + ("is finished" if self.done or self.last_closed >= self.run.rounds else f"round {round - 1} is its last")
                )
            self.strategy.request_rebuild(round)
            log.warning("[Engine] tree rebuild requested for round %d", round)
            return int(round)

    def wait_done(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.done, timeout=timeout)
