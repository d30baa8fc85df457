"""The worker's main loop: join, then pull -> evaluate -> train -> push, task after task."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import zlib
from pathlib import Path

import torch

from common.chunking import Role
from common.config import RunConfig, WorkerConfig
from common.errors import ConfigError, FailedPrecondition, FedtreeError, InvalidArgument
from common.exit_codes import ExitCode
from common.retry import Stopped
from common.schema import HEAD_LAYER, UploadSpec, schema_of, validate_head, validate_layer
from common.types import JoinRequest, PushHeader, Task, TaskKind
from common.version import PROTOCOL_VERSION
from worker.causal import evaluate_causal, train_causal
from worker.checkpoint import resume, save_checkpoint
from worker.client import FederationClient, Pulled
from worker.device import resolve_hardware
from worker.export import export_adapter
from worker.local_data import LocalData, PromptData, load_any_data
from worker.model import LoraModel, build_model, default_model_path, head_rows, head_width, load_head_rows
from worker.privacy import privatise
from worker.strategies import WorkerStrategy, create_worker_strategy
from worker.train import evaluate, train_local

log = logging.getLogger(__name__)


class Worker:
    """One federation participant. `run_forever()` returns an exit code."""

    def __init__(self, config: WorkerConfig, client: FederationClient | None = None) -> None:
        self.config = config
        self.hardware = resolve_hardware(config)  # a device or precision this machine lacks fails here, at start
        self.data: LocalData | PromptData = load_any_data(config.data)
        self.client = client or FederationClient(
            config.coordinator,
            config.worker_id,
            retry_for_s=config.connect_timeout_s,
            call_timeout_s=config.call_timeout_s,
            transfer_timeout_s=config.transfer_timeout_s,
            task_wait_s=config.task_wait_s,
            token=config.token,
            tls=config.tls,
            insecure=config.insecure,
        )
        self.out = Path(config.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.activity = "starting"
        self.timing: dict[str, float] = {}  # the current task's phase ends, time.time() (bench/round_overhead.py)
        self._stop = threading.Event()
        self.lm: LoraModel | None = None
        self.run: RunConfig | None = None
        self.model_path: Path | None = None
        self.strategy: WorkerStrategy | None = None  # the worker half of the run's strategy

    # -- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Fetch the run spec, build the seeded model, and join with its fingerprint."""
        run_id, run = self.client.get_run()
        self.run = run
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        if (run.task == "causal_lm") != isinstance(self.data, PromptData):
            have = "prompt/response pairs" if isinstance(self.data, PromptData) else "labelled texts"
            raise ConfigError(f"run task is {run.task} but this worker's data holds {have}")
        self.model_path = Path(self.config.model_path or default_model_path(run.task))
        self.lm = build_model(
            self.model_path, self.data.label_keys, run.lora, run.seed, run.train.train_head, run.task, self.hardware
        )
        self.strategy = create_worker_strategy(run)
        self.strategy.prepare(self.lm)
        schema = schema_of(self.lm.layers())
        last = resume(self.lm, self.strategy, self.out, run)
        if last is not None:
            log.info("[Worker] resumed local state (adapter, head, %s state) from round %d", run.strategy, last)
        current = self.client.join(
            JoinRequest(
                self.config.worker_id, self.lm.fingerprint, len(self.data.train), schema, PROTOCOL_VERSION, self.lm.prefix
            )
        )
        log.info(
            "[Worker] %s joined run %s (strategy %s, round %d): %d train / %d val examples, %d labels, %d LoRA layers",
            self.config.worker_id,
            run_id,
            run.strategy,
            current,
            len(self.data.train),
            len(self.data.val),
            len(self.data.labels),
            len(schema),
        )

    # -- main loop -----------------------------------------------------------------------------
    def run_forever(self) -> ExitCode:
        try:
            self.setup()
            heart = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
            heart.start()
            while not self._stop.is_set():
                task = self.client.get_task()
                if task.kind == TaskKind.DONE:
                    log.info("[Worker] run complete; personalised adapter in %s", self.out / "adapter")
                    return ExitCode.OK
                if task.kind == TaskKind.WAIT:
                    self.activity = "idle"
                    continue
                try:
                    self.handle(task)
                except FailedPrecondition as exc:  # e.g. the round closed while we trained: move on
                    log.warning("[Worker] round %d: %s", task.round, exc)
            return ExitCode.SIGNAL  # stop() between tasks
        except Stopped:
            log.info("[Worker] stopped (signal)")
            return ExitCode.SIGNAL
        except InvalidArgument as exc:
            log.error("[Worker] the coordinator rejected our data: %s", exc)
            return ExitCode.REJECTED
        except ConfigError as exc:
            log.error("[Worker] %s", exc)
            return ExitCode.CONFIG
        except FailedPrecondition as exc:
            log.error("[Worker] refused: %s", exc)
            return ExitCode.REJECTED
        except FedtreeError as exc:
            log.error("[Worker] %s", exc)
            return ExitCode.UNREACHABLE
        except Exception:  # noqa: BLE001 - entry point of the worker: log, return a code
            log.exception("[Worker] crashed")
            return ExitCode.ERROR
        finally:
            self._stop.set()
            self.client.close()

    def stop(self) -> None:
        """End the worker (SIGTERM/SIGINT): any wait on or retry of the coordinator ends at once
        (the client is interrupted); a round in training stops at its next step."""
        self._stop.set()
        self.client.interrupt()

    def handle(self, task: Task) -> None:
        assert self.lm is not None and self.run is not None and self.strategy is not None
        self.timing = {"start": time.time()}
        self.activity = "pulling"
        self.apply(task.round, self.client.pull(task.round))
        self._mark("pulled")
        start_of_round = self.lm.layers()  # the reference of this round's update (DP clips the delta)
        if self._cluster_head():  # the head rows, when pushed, are part of the clipped, noised update
            start_of_round[HEAD_LAYER] = head_rows(self.lm, self.data.label_keys)
        if task.kind == TaskKind.EVALUATE or task.round > 1:
            evaluated = task.round if task.kind == TaskKind.EVALUATE else task.round - 1
            self.activity = "evaluating"
            metrics = self.evaluate()
            self.client.report_metrics(evaluated, metrics)
            self._log_metrics({"round": evaluated, "kind": "evaluation", **metrics})
            log.info("[Worker] model after round %d: val %s", evaluated, _headline(metrics))
        self._mark("evaluated")
        if task.kind == TaskKind.EVALUATE:
            self.save_adapter(task.round, export=True)
            return
        self.activity = "training"
        seed = zlib.crc32(f"{self.run.seed}/{task.round}/{self.config.worker_id}".encode())  # stable across processes
        extra = self.strategy.extra_param_groups()
        desc = f"{self.config.worker_id} round {task.round}"
        if isinstance(self.data, PromptData):
            metrics = train_causal(
                self.lm, self.data.train, self.run.train, seed, desc, self.config.progress, extra, stop=self._stop
            )
        else:
            metrics = train_local(
                self.lm,
                self.data.train,
                self.data.label_ids,
                self.run.train,
                seed,
                desc=desc,
                progress=self.config.progress,
                extra_groups=extra,
                stop=self._stop,
            )
        self._mark("trained")
        metrics.update(self.strategy.metrics())  # e.g. lambda_<layer> (fedtree)
        # after local training, before aggregation (a classifier's is cheap; generation is not: skipped)
        local = {} if isinstance(self.data, PromptData) or not self.config.local_eval else self.evaluate()
        metrics.update({f"local_{k}": v for k, v in local.items()})
        self._mark("local_evaluated")
        self.activity = "pushing"
        upload = task.upload or UploadSpec(())
        update = self.update_for(upload)
        dp = self.run.privacy
        if dp.clip_norm is not None and update:
            gen = torch.Generator().manual_seed(seed ^ 0x5EED)
            update, norm = privatise(update, start_of_round, dp.clip_norm, dp.noise_multiplier, gen)
            metrics["update_norm"] = norm  # before clipping; noise is added after
        header = PushHeader(self.config.worker_id, task.round, uuid.uuid4().hex, len(self.data.train), metrics)
        result = self.client.push(header, update, self.run.chunk_size)
        self._mark("pushed")
        self._log_metrics({"round": task.round, "kind": "train", **metrics})
        self.save_adapter(task.round, export=task.round == self.run.rounds)
        self._mark("saved")
        self._log_metrics({"round": task.round, "kind": "timing", **self.timing})
        log.info(
            "[Worker] round %d pushed %d layers (train loss %.3f, local val %s)",
            task.round,
            result.layers_received,
            metrics["train_loss"],
            _headline(local),
        )
        self.activity = "idle"

    def apply(self, round: int, pulled: Pulled) -> None:
        """Check received adapters against our own tensors, then hand them to the strategy (by
        default cluster experts overwrite our adapter; worker/strategies/ say what else).
        A head blob (HEAD_LAYER, head_mode cluster) overwrites the rows of the labels it names."""
        assert self.lm is not None and self.run is not None and self.strategy is not None
        head = self._check_head(pulled[HEAD_LAYER]) if HEAD_LAYER in pulled else None
        pulled = {layer: roles for layer, roles in pulled.items() if layer != HEAD_LAYER}
        own = schema_of(self.lm.layers())
        for layer, roles in pulled.items():
            if layer not in own:
                raise InvalidArgument(f"coordinator sent layer {layer}, which this model does not have")
            for role, tensors in roles.items():
                unknown = sorted(set(tensors) - set(own[layer]))
                if unknown:
                    raise InvalidArgument(f"pulled layer {layer} {role.name.lower()}: unexpected tensors {unknown}")
                validate_layer(tensors, {n: own[layer][n] for n in tensors}, f"pulled layer {layer} {role.name.lower()}")
        self.strategy.apply(round, pulled)
        if head:
            load_head_rows(self.lm, self.data.label_keys, head)

    def _cluster_head(self) -> bool:
        """Is this worker's classifier head averaged in its group (head_mode cluster)?"""
        assert self.run is not None
        return self.run.train.head_mode == "cluster" and isinstance(self.data, LocalData)

    def _check_head(self, roles: dict[Role, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """A pulled head blob: cluster role only, rows of our own labels, hidden + 1 long, finite."""
        assert self.lm is not None and self.run is not None
        if not self._cluster_head():
            raise InvalidArgument(
                f"coordinator sent classifier head rows, but this run's head_mode is {self.run.train.head_mode}"
            )
        if set(roles) != {Role.CLUSTER}:
            raise InvalidArgument(f"pulled head: unexpected roles {sorted(r.name.lower() for r in roles)}, expected cluster")
        rows = roles[Role.CLUSTER]
        unknown = sorted(set(rows) - set(self.data.label_keys))
        if unknown:
            raise InvalidArgument(f"pulled head: rows of labels this worker does not have {unknown[:5]}")
        validate_head(rows, "pulled head", width=head_width(self.lm, len(self.data.label_keys)))
        return rows

    def update_for(self, upload: UploadSpec) -> dict[int, dict[str, torch.Tensor]]:
        assert self.lm is not None and self.strategy is not None
        update = self.strategy.update(upload)
        if upload.head and isinstance(self.data, LocalData):  # head_mode cluster: our label rows
            update[HEAD_LAYER] = head_rows(self.lm, self.data.label_keys)
        return update

    def save_adapter(self, round: int, export: bool) -> None:
        """Checkpoint the local state; on the last rounds also export the personalised model
        as a PEFT adapter directory (`python -m worker export` does it from the checkpoint)."""
        assert self.lm is not None and self.run is not None and self.model_path is not None and self.strategy is not None
        save_checkpoint(
            self.out, self.lm, self.strategy, self.run, list(self.data.labels), self.model_path, round, list(self.data.label_keys)
        )
        if export:
            export_adapter(
                self.lm, self.strategy, self.model_path, len(self.data.labels), self.run.lora, self.out / "adapter", self.run.task
            )

    def evaluate(self) -> dict[str, float]:
        """This worker's model on its validation split: accuracy (classification) or ROUGE + task score (causal_lm)."""
        assert self.lm is not None and self.run is not None
        if isinstance(self.data, PromptData):
            return evaluate_causal(self.lm, self.data.val, self.run.train, self.run.generation)
        return evaluate(self.lm, self.data.val, self.data.label_ids, self.run.train)

    def _mark(self, phase: str) -> None:
        """Timestamp the end of a phase of the current task (pulled, evaluated, trained, ...)."""
        self.timing[phase] = time.time()

    def _log_metrics(self, record: dict[str, object]) -> None:
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"worker_id": self.config.worker_id, "time": time.time(), **record}) + "\n")

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            try:
                self.client.heartbeat(self.activity, timeout_s=self.config.heartbeat_s)
            except Exception as exc:  # noqa: BLE001 - heartbeats are best effort
                log.debug("[Worker] heartbeat failed: %s", exc)


def _headline(metrics: dict[str, float]) -> str:
    """The metrics a log line shows: accuracy, or ROUGE-1 (+ task score) for generation."""
    shown = [k for k in ("accuracy", "rouge1", "rougeL", "task_score") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in shown) or "-"
