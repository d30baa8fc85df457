"""At most N pushes are received and M pulls are streamed at once: the coordinator's memory for
transfers in flight is bounded by N and M, not by the number of workers.

A push is held whole (validated, not yet folded) until its last layer arrives, because only a
complete push may enter an aggregate. Without a bound, 400 workers pushing 16 MB adapters at the
same moment would hold 6.4 GB. A push over the limit waits for a slot before its first message
is read; gRPC flow control holds its bytes on the worker meanwhile. Waiting counts against the
push's own deadline, so the limit must leave room for the slowest links (`max_concurrent_pushes`).

A pull streams cached blobs, but gRPC queues what a handler yields ahead of the worker's reads:
without a bound, 400 workers pulling a 16 MB adapter at once queue 6.4 GB (`max_concurrent_pulls`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

PUSH_METHOD = "/fedtree.v1.Federation/PushUpdate"
PULL_METHOD = "/fedtree.v1.Federation/PullAdapters"


class TransferLimit(grpc.ServerInterceptor):
    """Server interceptor: one semaphore around the PushUpdate handler, one around PullAdapters."""

    def __init__(self, max_pushes: int, max_pulls: int) -> None:
        if max_pushes < 1 or max_pulls < 1:
            raise ValueError(f"transfer limits must be >= 1, got pushes={max_pushes} pulls={max_pulls}")
        self.push_slots = threading.BoundedSemaphore(max_pushes)
        self.pull_slots = threading.BoundedSemaphore(max_pulls)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = continuation(details)
        if handler is None:
            return handler
        if details.method == PUSH_METHOD and handler.stream_unary is not None:
            push = handler.stream_unary

            def limited_push(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
                with self.push_slots:
                    return push(request_iterator, context)

            return handler._replace(stream_unary=limited_push)
        if details.method == PULL_METHOD and handler.unary_stream is not None:
            pull = handler.unary_stream

            def limited_pull(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with self.pull_slots:  # held while streaming; released when the stream ends or is cancelled
                    yield from pull(request, context)

            return handler._replace(unary_stream=limited_pull)
        return handler
