"""The worker's gRPC client: retries with backoff + jitter, chunked pulls and pushes."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
import torch

from common import blobs, codec, serde, wire
from common.chunking import BlobKey, Role, assemble_all, split
from common.config import ClientTlsConfig, RunConfig
from common.errors import Unavailable, from_rpc_error
from common.grpc_options import CHANNEL_OPTIONS
from common.tls import secure_channel
from common.types import JoinRequest, PushHeader, PushResult, Task
from proto.fedtree.v1 import federation_pb2 as pb
from proto.fedtree.v1 import federation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

# Transport failures worth retrying: the coordinator is not up yet, restarting, or unreachable.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
PULL_MAX_BLOB_BYTES = 1 << 30

Tensors = dict[str, torch.Tensor]
Pulled = dict[int, dict[Role, Tensors]]


class FederationClient:
    def __init__(
        self,
        target: str,
        worker_id: str,
        retry_for_s: float = 600.0,
        rpc_timeout_s: float = 300.0,
        token: str | None = None,
        tls: ClientTlsConfig | None = None,
        insecure: bool = False,
    ) -> None:
        self.target = target
        self.md = (("authorization", f"Bearer {token}"),) if token else None
        self.worker_id = worker_id
        self.retry_for_s = retry_for_s
        self.rpc_timeout_s = rpc_timeout_s
        self.channel = secure_channel(target, tls, insecure, CHANNEL_OPTIONS)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.wire_dtype: str | None = None  # the run's, learnt in get_run()
        # The two bulk calls read and write chunk bytes by hand (common/wire.py): same wire format, fewer copies.
        self._pull_raw = self.channel.unary_stream(
            "/fedtree.v1.Federation/PullAdapters", request_serializer=pb.PullAdaptersRequest.SerializeToString
        )
        self._push_raw = self.channel.stream_unary(
            "/fedtree.v1.Federation/PushUpdate", response_deserializer=pb.PushUpdateResponse.FromString
        )

    def close(self) -> None:
        self.channel.close()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run fn, retrying transport failures with exponential backoff and full jitter."""
        give_up = time.monotonic() + self.retry_for_s
        delay = 0.5
        while True:
            try:
                return fn()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code not in RETRYABLE:
                    raise from_rpc_error(exc) from None
                if time.monotonic() + delay > give_up:
                    raise Unavailable(
                        f"coordinator {self.target} unreachable for {self.retry_for_s:.0f} s during {what}: {exc.details()}"
                    ) from None
                sleep = random.uniform(0, delay)
                log.warning("[Worker.%s] %s: %s; retrying in %.1f s", what, code.name if code else "?", exc.details(), sleep)
                time.sleep(sleep)
                delay = min(delay * 2, 30.0)

    def get_run(self) -> tuple[str, RunConfig]:
        resp = self._call(
            "GetRun",
            lambda: self.stub.GetRun(
                pb.GetRunRequest(worker_id=self.worker_id), timeout=30, wait_for_ready=True, metadata=self.md
            ),
        )
        run_id, run = serde.run_from_proto(resp.run)
        self.wire_dtype = run.wire_dtype
        return run_id, run

    def join(self, req: JoinRequest) -> int:
        resp = self._call(
            "Join", lambda: self.stub.Join(serde.join_to_proto(req), timeout=30, wait_for_ready=True, metadata=self.md)
        )
        return resp.current_round

    def get_task(self, wait_s: float = 10.0) -> Task:
        req = pb.GetTaskRequest(worker_id=self.worker_id, wait_seconds=wait_s)
        return serde.task_from_proto(
            self._call("GetTask", lambda: self.stub.GetTask(req, timeout=wait_s + 10, wait_for_ready=True, metadata=self.md))
        )

    def pull(self, round: int) -> Pulled:
        """Stream this round's adapters; returns layer -> role -> tensors."""

        def fetch() -> Pulled:
            stream = self._pull_raw(
                pb.PullAdaptersRequest(worker_id=self.worker_id, round=round), timeout=self.rpc_timeout_s, metadata=self.md
            )
            out: Pulled = {}
            chunks = (wire.decode_chunk(c) for c in stream)
            for key, blob in assemble_all(chunks, PULL_MAX_BLOB_BYTES):
                tensors = blobs.decode_blob(blob, f"pulled layer {key.layer} {key.role.name.lower()}")
                out.setdefault(key.layer, {})[key.role] = tensors
            return out

        return self._call("PullAdapters", fetch)

    def push(self, header: PushHeader, update: dict[int, Tensors], chunk_size: int) -> PushResult:
        """Stream an update, layer by layer; retried as a whole with the same upload id."""

        def requests() -> Iterator[bytes]:
            yield serde.push_header_to_proto(header).SerializeToString()
            for layer, tensors in sorted(update.items()):
                sent, wire_meta = codec.to_wire(tensors, self.wire_dtype)
                blob = codec.encode(sent, {"round": str(header.round), "layer": str(layer), "role": "update", **wire_meta})
                for chunk in split(blob, BlobKey(header.round, layer, Role.UPDATE), chunk_size):
                    yield wire.encode_push_chunk(chunk)

        resp = self._call("PushUpdate", lambda: self._push_raw(requests(), timeout=self.rpc_timeout_s, metadata=self.md))
        return serde.push_result_from_proto(resp)

    def report_metrics(self, round: int, metrics: dict[str, float]) -> None:
        req = pb.ReportMetricsRequest(worker_id=self.worker_id, round=round, metrics=metrics)
        self._call("ReportMetrics", lambda: self.stub.ReportMetrics(req, timeout=30, wait_for_ready=True, metadata=self.md))

    def heartbeat(self, activity: str) -> int:
        req = pb.HeartbeatRequest(worker_id=self.worker_id, activity=activity)
        return self.stub.Heartbeat(req, timeout=10, metadata=self.md).current_round
