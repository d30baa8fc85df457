"""The worker's gRPC client: one retry layer (common/retry.py), named deadlines, chunked pulls and pushes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

from common import blobs, codec, framing, serde, wire
from common.buffers import BufferPool
from common.chunking import BlobKey, Role, assemble_all
from common.config import ClientTlsConfig, RunConfig
from common.digest import DEFAULT_DIGEST, DigestName
from common.grpc_options import CHANNEL_OPTIONS
from common.prefetch import ahead
from common.retry import (
    CALL_TIMEOUT_S,
    DEFAULT_LONG_POLL_S,
    GET_TASK_SLACK_S,
    RETRY_FOR_S,
    TRANSFER_TIMEOUT_S,
    RetryPolicy,
    call_with_retry,
)
from common.tls import secure_channel
from common.types import JoinRequest, PushHeader, PushResult, Task
from proto.fedtree.v1 import federation_pb2 as pb
from proto.fedtree.v1 import federation_pb2_grpc as pb_grpc

T = TypeVar("T")
PULL_MAX_BLOB_BYTES = 1 << 30
# messages received ahead of reassembly (pull) and framed ahead of gRPC's send (push): the chunk window
PULL_READ_AHEAD = 8
PUSH_FRAME_AHEAD = 4

Tensors = dict[str, torch.Tensor]
Pulled = dict[int, dict[Role, Tensors]]


class FederationClient:
    def __init__(
        self,
        target: str,
        worker_id: str,
        retry_for_s: float = RETRY_FOR_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
        transfer_timeout_s: float = TRANSFER_TIMEOUT_S,
        task_wait_s: float = DEFAULT_LONG_POLL_S,
        token: str | None = None,
        tls: ClientTlsConfig | None = None,
        insecure: bool = False,
    ) -> None:
        self.target = target
        self.md = (("authorization", f"Bearer {token}"),) if token else None
        self.worker_id = worker_id
        self.retry = RetryPolicy(retry_for_s=retry_for_s)
        self.call_timeout_s = call_timeout_s
        self.transfer_timeout_s = transfer_timeout_s
        self.task_wait_s = task_wait_s
        self.channel = secure_channel(target, tls, insecure, CHANNEL_OPTIONS)
        self.stopping = threading.Event()  # set by interrupt(): every wait and retry ends (common/retry.py)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.wire_dtype: str | None = None  # the run's, learnt in get_run()
        self.digest: DigestName = DEFAULT_DIGEST  # the run's blob digest, learnt in get_run()
        self.buffers = BufferPool()  # pulls reassemble into the memory of earlier pulls once those are dropped
        # The two bulk calls read and write chunk bytes by hand (common/wire.py): same wire format, fewer copies.
        self._pull_raw = self.channel.unary_stream(
            "/fedtree.v1.Federation/PullAdapters", request_serializer=pb.PullAdaptersRequest.SerializeToString
        )
        self._push_raw = self.channel.stream_unary(
            "/fedtree.v1.Federation/PushUpdate", response_deserializer=pb.PushUpdateResponse.FromString
        )

    def close(self) -> None:
        self.channel.close()

    def interrupt(self) -> None:
        """Stop now (SIGTERM/SIGINT): the call in flight is cancelled, a retry wait ends, and every
        call from here on raises common.retry.Stopped."""
        self.stopping.set()
        self.channel.close()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """One call, retried as common/retry.py says (the only retry layer)."""
        return call_with_retry(fn, what, self.target, self.retry, stop=self.stopping)

    def get_run(self) -> tuple[str, RunConfig]:
        resp = self._call(
            "GetRun",
            lambda: self.stub.GetRun(serde.get_run_request(self.worker_id), timeout=self.call_timeout_s, metadata=self.md),
        )
        run_id, run = serde.run_from_proto(resp.run)
        self.wire_dtype, self.digest = run.wire_dtype, run.digest
        return run_id, run

    def join(self, req: JoinRequest) -> int:
        resp = self._call(
            "Join",
            lambda: self.stub.Join(serde.join_to_proto(req), timeout=self.call_timeout_s, metadata=self.md),
        )
        return resp.current_round

    def get_task(self, wait_s: float | None = None) -> Task:
        """Long-poll for the next task: the coordinator holds the call up to `wait_s` (default
        `task_wait_s`, capped by its long_poll_s) when there is nothing to do."""
        wait = self.task_wait_s if wait_s is None else wait_s
        req = serde.get_task_request(self.worker_id, wait)
        timeout = wait + GET_TASK_SLACK_S
        return serde.task_from_proto(self._call("GetTask", lambda: self.stub.GetTask(req, timeout=timeout, metadata=self.md)))

    def pull(self, round: int) -> Pulled:
        """Stream this round's adapters; returns layer -> role -> tensors."""

        def fetch() -> Pulled:
            stream = self._pull_raw(serde.pull_request(self.worker_id, round), timeout=self.transfer_timeout_s, metadata=self.md)
            out: Pulled = {}
            # a thread keeps receiving while this one copies, hashes and decodes the last chunk
            messages = ahead(stream, PULL_READ_AHEAD, name="pull-read-ahead")
            try:
                chunks = (wire.decode_chunk(c) for c in messages)
                for key, blob in assemble_all(chunks, PULL_MAX_BLOB_BYTES, self.digest, self.buffers):
                    tensors = blobs.decode_blob(blob, f"pulled layer {key.layer} {key.role.name.lower()}")
                    out.setdefault(key.layer, {})[key.role] = tensors
            finally:
                messages.close()
                stream.cancel()  # a no-op once the stream has ended; else it stops the coordinator's send
            return out

        return self._call("PullAdapters", fetch)

    def push(self, header: PushHeader, update: dict[int, Tensors], chunk_size: int) -> PushResult:
        """Stream an update, layer by layer; retried as a whole with the same upload id."""

        def requests() -> Iterator[bytes]:
            yield serde.push_header_to_proto(header).SerializeToString()
            # gRPC sends one message at a time and waits for it to go out: frame the next ones meanwhile
            yield from ahead(frames(), PUSH_FRAME_AHEAD, name="push-frame-ahead")

        def frames() -> Iterator[bytes]:
            for layer, tensors in sorted(update.items()):
                sent, wire_meta = codec.to_wire(tensors, self.wire_dtype)
                layout = codec.layout(sent, {"round": str(header.round), "layer": str(layer), "role": "update", **wire_meta})
                key = BlobKey(header.round, layer, Role.UPDATE)
                yield from framing.frames(layout, key, chunk_size, self.digest, push=True)

        resp = self._call("PushUpdate", lambda: self._push_raw(requests(), timeout=self.transfer_timeout_s, metadata=self.md))
        return serde.push_result_from_proto(resp)

    def report_metrics(self, round: int, metrics: dict[str, float]) -> None:
        req = serde.report_metrics_request(self.worker_id, round, metrics)
        self._call(
            "ReportMetrics",
            lambda: self.stub.ReportMetrics(req, timeout=self.call_timeout_s, metadata=self.md),
        )

    def heartbeat(self, activity: str, timeout_s: float) -> int:
        """Best effort: one attempt, no retry, no waiting for the channel (the next beat follows a
        period later); `timeout_s` should not exceed that period."""
        req = serde.heartbeat_request(self.worker_id, activity)
        return self.stub.Heartbeat(req, timeout=min(timeout_s, self.call_timeout_s), metadata=self.md).current_round
