"""Thin gRPC servicer of fedtree.v1.Federation: decode, call the engine, encode, map errors."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from common import serde, wire
from common.buffers import BufferPool
from common.errors import FedtreeError, InvalidArgument, PermissionDenied, status_code
from common.prefetch import ahead
from common.types import PushResult
from coordinator.engine import RoundEngine
from coordinator.metrics import PUSH_LATENCY
from coordinator.transfer import DEFAULT_CACHE_BYTES, BlobCache, UpdateReceiver, download_messages
from proto.fedtree.v1 import federation_pb2 as pb
from proto.fedtree.v1 import federation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
RECEIVE_POOL_BYTES = 512 << 20
# push messages received ahead of reassembly: validating a layer does not stall the next one's arrival
PUSH_READ_AHEAD = 8


def _abort(context: grpc.ServicerContext, method: str, exc: Exception) -> None:
    if isinstance(exc, FedtreeError):
        log.warning("[Coordinator.%s] rejected: %s: %s", method, status_code(exc).name, exc)
        context.abort(status_code(exc), str(exc))
    if isinstance(exc, grpc.RpcError) and not context.is_active():  # the client went away mid-stream
        log.warning("[Coordinator.%s] client disconnected mid-call; nothing of the call was kept", method)
        return
    log.exception("[Coordinator.%s] internal error", method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def rpc(method: F) -> F:
    """Map domain errors to status codes through common.errors (unary and streaming methods)."""
    name = method.__name__
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - boundary: everything becomes a status
                _abort(context, name, exc)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - boundary
            _abort(context, name, exc)

    return unary  # type: ignore[return-value]


def check_identity(context: grpc.ServicerContext, worker_id: str) -> None:
    """With mutual TLS a worker acts only as the id in its certificate's common name."""
    names = [n.decode() for n in (context.auth_context().get("x509_common_name") or [])]
    if worker_id not in names:
        raise PermissionDenied(f"the client certificate of {names or 'nobody'} cannot act as worker '{worker_id}'")


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(
        self,
        engine: RoundEngine,
        max_blob_bytes: int,
        require_identity: bool = False,
        download_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.engine = engine
        self.require_identity = require_identity
        self.max_blob_bytes = max_blob_bytes
        self.cache = BlobCache(wire_dtype=engine.run.wire_dtype, digest=engine.run.digest, max_bytes=download_cache_bytes)
        self.buffers = BufferPool(RECEIVE_POOL_BYTES)  # pushes reassemble into the memory of committed ones

    def _identity(self, context: grpc.ServicerContext, worker_id: str) -> None:
        if self.require_identity:
            check_identity(context, worker_id)

    @rpc
    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.GetRunResponse:
        self._identity(context, request.worker_id)
        return pb.GetRunResponse(run=serde.run_to_proto(self.engine.run_id, self.engine.run))

    @rpc
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinResponse:
        self._identity(context, request.worker_id)
        run_id, run, current = self.engine.join(serde.join_from_proto(request), address=context.peer())
        return pb.JoinResponse(run=serde.run_to_proto(run_id, run), current_round=current)

    @rpc
    def GetTask(self, request: pb.GetTaskRequest, context: grpc.ServicerContext) -> pb.GetTaskResponse:
        self._identity(context, request.worker_id)
        remaining = context.time_remaining()  # answer before the caller's deadline expires
        wait = request.wait_seconds if remaining is None else min(request.wait_seconds, remaining - 0.5)
        return serde.task_to_proto(self.engine.get_task(request.worker_id, wait))

    @rpc
    def PullAdapters(self, request: pb.PullAdaptersRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._identity(context, request.worker_id)
        version, items = self.engine.downloads(request.worker_id, request.round)
        sent = 0
        for encoded in download_messages(self.cache, version, request.round, items, self.engine.run.chunk_size):
            yield from encoded.messages()  # serialised Chunks, cached across workers (see add_federation_servicer)
            sent += encoded.nbytes
        self.engine.add_bytes_sent(request.worker_id, sent)

    @rpc
    def PushUpdate(self, request_iterator: Iterator[wire.PushPart], context: grpc.ServicerContext) -> pb.PushUpdateResponse:
        started = time.perf_counter()
        try:
            first = next(request_iterator, None)
            if first is None or first.header is None:
                raise InvalidArgument("a push must start with a header message")
            self._identity(context, first.header.worker_id)
            admitted = self.engine.begin_push(first.header)
            if isinstance(admitted, PushResult):  # a retry after a lost ack: acknowledge, count nothing
                for _ in request_iterator:
                    pass
                return serde.push_result_to_proto(admitted)
            receiver = UpdateReceiver(
                admitted.header,
                admitted.expected,
                self.max_blob_bytes,
                self.engine.run.wire_dtype,
                self.engine.run.digest,
                self.buffers,
            )
            with contextlib.closing(ahead(request_iterator, PUSH_READ_AHEAD, name="push-read-ahead")) as parts:
                for part in parts:
                    if part.chunk is None:
                        raise InvalidArgument(part.problem or "only chunks may follow the push header")
                    receiver.feed(part.chunk)
            update = receiver.finish()
            return serde.push_result_to_proto(self.engine.commit(admitted, update, receiver.nbytes))
        finally:
            PUSH_LATENCY.observe(time.perf_counter() - started)

    @rpc
    def ReportMetrics(self, request: pb.ReportMetricsRequest, context: grpc.ServicerContext) -> pb.ReportMetricsResponse:
        self._identity(context, request.worker_id)
        self.engine.report_metrics(request.worker_id, request.round, dict(request.metrics))
        return pb.ReportMetricsResponse()

    @rpc
    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatResponse:
        self._identity(context, request.worker_id)
        return pb.HeartbeatResponse(current_round=self.engine.heartbeat(request.worker_id, request.activity))


def add_federation_servicer(servicer: FederationServicer, server: grpc.Server) -> None:
    """Register the Federation service like the generated add_FederationServicer_to_server, except
    for the two bulk calls: PullAdapters streams pre-serialised Chunk messages (identity
    serializer) and PushUpdate reads its messages with common/wire.py (payloads stay views of the
    received bytes). The bytes on the wire are the same protobuf messages."""

    def unary(method: Callable[..., Any], request: Any, response: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request.FromString, response_serializer=response.SerializeToString
        )

    handlers = {
        "GetRun": unary(servicer.GetRun, pb.GetRunRequest, pb.GetRunResponse),
        "Join": unary(servicer.Join, pb.JoinRequest, pb.JoinResponse),
        "GetTask": unary(servicer.GetTask, pb.GetTaskRequest, pb.GetTaskResponse),
        "PullAdapters": grpc.unary_stream_rpc_method_handler(
            servicer.PullAdapters, request_deserializer=pb.PullAdaptersRequest.FromString, response_serializer=bytes
        ),
        "PushUpdate": grpc.stream_unary_rpc_method_handler(
            servicer.PushUpdate,
            request_deserializer=wire.decode_push_request,
            response_serializer=pb.PushUpdateResponse.SerializeToString,
        ),
        "ReportMetrics": unary(servicer.ReportMetrics, pb.ReportMetricsRequest, pb.ReportMetricsResponse),
        "Heartbeat": unary(servicer.Heartbeat, pb.HeartbeatRequest, pb.HeartbeatResponse),
    }
    service = pb.DESCRIPTOR.services_by_name["Federation"]
    assert set(handlers) == {m.name for m in service.methods}, "a Federation method is not registered"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
