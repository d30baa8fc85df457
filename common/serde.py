"""The only module that converts between protobuf messages and fedtree's domain types."""

from __future__ import annotations

from collections.abc import Sequence

from common.admin_types import FilePiece, RoundView, StatusView, TreeView, WorkerView
from common.chunking import ChunkData
from common.config import FedTreeConfig, GenerationConfig, LoraConfig, PrivacyConfig, RunConfig, TrainConfig
from common.errors import InvalidArgument
from common.schema import Schema, TensorSpec, UploadSpec
from common.types import JoinRequest, PushHeader, PushResult, Task, TaskKind
from proto.fedtree.v1 import admin_pb2 as apb
from proto.fedtree.v1 import federation_pb2 as pb

_PERSONAL_INIT: float = FedTreeConfig.model_fields["personal_init"].default  # travels as 0


def chunk_to_proto(chunk: ChunkData) -> pb.Chunk:
    return pb.Chunk(
        round=chunk.key.round,
        layer=chunk.key.layer,
        role=int(chunk.key.role),  # type: ignore[arg-type]
        index=chunk.index,
        total=chunk.total,
        digest=chunk.digest,
        blob_size=chunk.blob_size,
        data=bytes(chunk.data),
    )


def run_to_proto(run_id: str, run: RunConfig) -> pb.RunSpec:
    return pb.RunSpec(
        run_id=run_id,
        strategy=run.strategy,
        rounds=run.rounds,
        seed=run.seed,
        chunk_size=run.chunk_size,
        lora=pb.LoraSpec(
            rank=run.lora.rank, alpha=run.lora.alpha, dropout=run.lora.dropout, target_modules=list(run.lora.target_modules)
        ),
        train=pb.TrainSpec(
            local_epochs=run.train.local_epochs,
            local_steps=run.train.local_steps,
            batch_size=run.train.batch_size,
            learning_rate=run.train.learning_rate,
            weight_decay=run.train.weight_decay,
            max_seq_length=run.train.max_seq_length,
            train_head=run.train.train_head,
            head_mode=run.train.head_mode,
            gradient_accumulation_steps=run.train.gradient_accumulation_steps,
            task=run.task,
            max_new_tokens=run.generation.max_new_tokens,
            num_beams=run.generation.num_beams,
        ),
        fedtree=pb.FedTreeSpec(
            warmup_rounds=run.fedtree.warmup_rounds,
            window=run.fedtree.window,
            tau=run.fedtree.tau,
            linkage=run.fedtree.linkage,
            metric=run.fedtree.metric,
            rebuild_every=run.fedtree.rebuild_every,
            theta_lr=run.fedtree.theta_lr,
            fixed_k=run.fedtree.fixed_k or 0,
            cluster_only=run.fedtree.cluster_only,
            lambda_init=run.fedtree.lambda_init,
            personal=run.fedtree.personal,
            distance_on=run.fedtree.distance_on,
            # the default travels as 0 (not on the wire at all): RunSpecs of runs without it are unchanged
            personal_init=0.0 if run.fedtree.personal_init == _PERSONAL_INIT else run.fedtree.personal_init,
        ),
        dp_clip_norm=run.privacy.clip_norm or 0.0,
        dp_noise_multiplier=run.privacy.noise_multiplier,
        wire_dtype=run.wire_dtype or "",
        digest=run.digest,
    )


def run_from_proto(msg: pb.RunSpec) -> tuple[str, RunConfig]:
    lora = LoraConfig(
        rank=msg.lora.rank, alpha=msg.lora.alpha, dropout=msg.lora.dropout, target_modules=tuple(msg.lora.target_modules)
    )
    train = TrainConfig(
        local_epochs=msg.train.local_epochs,
        local_steps=msg.train.local_steps,
        batch_size=msg.train.batch_size,
        learning_rate=msg.train.learning_rate,
        weight_decay=msg.train.weight_decay,
        max_seq_length=msg.train.max_seq_length,
        head_mode=msg.train.head_mode or ("local" if msg.train.train_head else "frozen"),  # type: ignore[arg-type]
        gradient_accumulation_steps=msg.train.gradient_accumulation_steps or 1,
    )
    ft = msg.fedtree
    fedtree = FedTreeConfig(
        warmup_rounds=ft.warmup_rounds,
        window=ft.window,
        tau=ft.tau,
        linkage=ft.linkage,  # type: ignore[arg-type]
        metric=ft.metric,  # type: ignore[arg-type]
        rebuild_every=ft.rebuild_every,
        theta_lr=ft.theta_lr,
        fixed_k=ft.fixed_k or None,
        cluster_only=ft.cluster_only,
        lambda_init=ft.lambda_init or 0.5,
        personal=ft.personal,
        distance_on=ft.distance_on or "B",  # type: ignore[arg-type]  # empty: a coordinator from before the knob
        personal_init=ft.personal_init or _PERSONAL_INIT,
    )
    generation = GenerationConfig(max_new_tokens=msg.train.max_new_tokens or 32, num_beams=msg.train.num_beams or 1)
    run = RunConfig(
        strategy=msg.strategy,
        task=msg.train.task or "classification",  # type: ignore[arg-type]
        generation=generation,
        rounds=msg.rounds,
        seed=msg.seed,
        chunk_size=msg.chunk_size,
        lora=lora,
        train=train,
        fedtree=fedtree,
        privacy=PrivacyConfig(clip_norm=msg.dp_clip_norm or None, noise_multiplier=msg.dp_noise_multiplier),
        wire_dtype=msg.wire_dtype or None,  # type: ignore[arg-type]  # pydantic validates the literal
        digest=msg.digest or "sha256",  # type: ignore[arg-type]  # empty: a coordinator from before protocol 1.1
    )
    return msg.run_id, run


def schema_to_proto(schema: Schema) -> list[pb.LayerSchema]:
    return [
        pb.LayerSchema(
            layer=layer,
            tensors=[pb.TensorSpec(name=s.name, shape=list(s.shape), dtype=s.dtype) for s in specs.values()],
        )
        for layer, specs in sorted(schema.items())
    ]


def schema_from_proto(layers: list[pb.LayerSchema]) -> Schema:
    schema: Schema = {}
    for layer in layers:
        if layer.layer in schema:
            raise InvalidArgument(f"schema lists layer {layer.layer} twice")
        schema[layer.layer] = {t.name: TensorSpec(t.name, tuple(int(d) for d in t.shape), t.dtype) for t in layer.tensors}
    return schema


def join_to_proto(req: JoinRequest) -> pb.JoinRequest:
    return pb.JoinRequest(
        worker_id=req.worker_id,
        model_fingerprint=req.fingerprint,
        num_train_examples=req.num_train_examples,
        schema=schema_to_proto(req.schema),
        version=req.version,
        layer_prefix=req.layer_prefix,
    )


def join_from_proto(msg: pb.JoinRequest) -> JoinRequest:
    return JoinRequest(
        worker_id=msg.worker_id,
        fingerprint=msg.model_fingerprint,
        num_train_examples=msg.num_train_examples,
        schema=schema_from_proto(list(msg.schema)),
        version=msg.version,
        layer_prefix=msg.layer_prefix,
    )


def task_to_proto(task: Task) -> pb.GetTaskResponse:
    msg = pb.GetTaskResponse(kind=int(task.kind), round=task.round, deadline_unix=task.deadline_unix)  # type: ignore[arg-type]
    if task.upload is not None:
        msg.upload.CopyFrom(pb.UploadSpec(layers=list(task.upload.layers), lora_a=task.upload.lora_a, lora_b=task.upload.lora_b))
    return msg


def task_from_proto(msg: pb.GetTaskResponse) -> Task:
    try:
        kind = TaskKind(msg.kind)
    except ValueError:
        raise InvalidArgument(f"unknown task kind {msg.kind}") from None
    upload = None
    if msg.HasField("upload"):
        upload = UploadSpec(tuple(msg.upload.layers), msg.upload.lora_a, msg.upload.lora_b)
    return Task(kind, msg.round, msg.deadline_unix, upload)


def push_header_to_proto(header: PushHeader) -> pb.PushUpdateRequest:
    return pb.PushUpdateRequest(
        header=pb.PushHeader(
            worker_id=header.worker_id,
            round=header.round,
            upload_id=header.upload_id,
            num_examples=header.num_examples,
            metrics=header.metrics,
        )
    )


def push_header_from_proto(msg: pb.PushHeader) -> PushHeader:
    return PushHeader(msg.worker_id, msg.round, msg.upload_id, msg.num_examples, dict(msg.metrics))


def push_result_to_proto(result: PushResult) -> pb.PushUpdateResponse:
    return pb.PushUpdateResponse(
        accepted=result.accepted, round=result.round, layers_received=result.layers_received, duplicate=result.duplicate
    )


def push_result_from_proto(msg: pb.PushUpdateResponse) -> PushResult:
    return PushResult(msg.accepted, msg.round, msg.layers_received, msg.duplicate)


# -- the Admin API: the operator's view (common/admin_types.py) -> fedtree.v1 Admin messages --------


def tree_to_proto(view: TreeView) -> apb.GetTreeResponse:
    return apb.GetTreeResponse(
        strategy=view.strategy,
        built=view.built,
        built_round=view.built_round,
        linkage=view.linkage,
        leaves=list(view.leaves),
        merges=[apb.Merge(left=m.left, right=m.right, distance=m.distance, size=m.size) for m in view.merges],
        layers=[
            apb.LayerCut(
                layer=cut.layer,
                cluster_count=cut.cluster_count,
                clusters=[apb.Cluster(workers=list(group)) for group in cut.clusters],
                lambdas=cut.lambdas,
            )
            for cut in view.layers
        ],
        rebuild_pending=view.rebuild_pending,
        late_joiners=[
            apb.LateJoiner(
                worker_id=late.worker_id,
                placed_round=late.placed_round,
                distance=late.distance,
                new_branch_from=late.new_branch_from,
                anchor=late.anchor,
                warmup_rounds_done=late.warmup_rounds_done,
                late_warmup_rounds=late.late_warmup_rounds,
                layers=[
                    apb.LatePlacement(
                        layer=p.layer, cluster=p.cluster, distance=p.distance, threshold=p.threshold, new_branch=p.new_branch
                    )
                    for p in late.layers
                ],
            )
            for late in view.late_joiners
        ],
    )


def workers_to_proto(views: Sequence[WorkerView]) -> apb.ListWorkersResponse:
    return apb.ListWorkersResponse(
        workers=[
            apb.WorkerInfo(
                worker_id=w.worker_id,
                address=w.address,
                state=int(w.state),  # type: ignore[arg-type]
                activity=w.activity,
                last_heartbeat_unix=w.last_heartbeat_unix,
                rounds_done=w.rounds_done,
                bytes_sent=w.bytes_sent,
                bytes_received=w.bytes_received,
                last_metrics=w.last_metrics,
                num_train_examples=w.num_train_examples,
            )
            for w in views
        ]
    )


def status_to_proto(view: StatusView) -> apb.GetStatusResponse:
    return apb.GetStatusResponse(
        run_id=view.run_id,
        strategy=view.strategy,
        phase=int(view.phase),  # type: ignore[arg-type]
        current_round=view.current_round,
        last_closed_round=view.last_closed_round,
        rounds=view.rounds,
        quorum=view.quorum,
        pushes=view.pushes,
        deadline_unix=view.deadline_unix,
        workers=view.workers,
        remaining_s=view.remaining_s,
    )


def rounds_to_proto(views: Sequence[RoundView]) -> apb.GetRoundsResponse:
    return apb.GetRoundsResponse(
        rounds=[
            apb.RoundInfo(
                round=r.round,
                participants=list(r.participants),
                started_unix=r.started_unix,
                closed_unix=r.closed_unix,
                duration_s=r.duration_s,
                bytes=r.bytes,
                pushes=r.pushes,
                mean_metrics=r.mean_metrics,
                accuracy=r.accuracy,
                metric=r.metric,
                metric_per_worker=r.metric_per_worker,
            )
            for r in views
        ]
    )


def file_piece_to_proto(piece: FilePiece) -> apb.FileChunk:
    return apb.FileChunk(path=piece.path, index=piece.index, total=piece.total, data=piece.data, sha256=piece.digest)


# -- the worker's requests (worker/client.py sends them) ------------------------------------------
def get_run_request(worker_id: str) -> pb.GetRunRequest:
    return pb.GetRunRequest(worker_id=worker_id)


def get_task_request(worker_id: str, wait_s: float) -> pb.GetTaskRequest:
    return pb.GetTaskRequest(worker_id=worker_id, wait_seconds=wait_s)


def pull_request(worker_id: str, round: int) -> pb.PullAdaptersRequest:
    return pb.PullAdaptersRequest(worker_id=worker_id, round=round)


def report_metrics_request(worker_id: str, round: int, metrics: dict[str, float]) -> pb.ReportMetricsRequest:
    return pb.ReportMetricsRequest(worker_id=worker_id, round=round, metrics=metrics)


def heartbeat_request(worker_id: str, activity: str) -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(worker_id=worker_id, activity=activity)
