"""At most N pushes are received at once: the coordinator's memory for in-flight uploads is
bounded by N, not by the number of workers.

A push is held whole (validated, not yet folded) until its last layer arrives, because only a
complete push may enter an aggregate. Without a bound, 400 workers pushing 16 MB adapters at the
same moment would hold 6.4 GB. A push over the limit waits for a slot before its first message
is read; gRPC flow control holds its bytes on the worker meanwhile. Waiting counts against the
push's own deadline, so the limit must leave room for the slowest links (`max_concurrent_pushes`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

PUSH_METHOD = "/fedtree.v1.Federation/PushUpdate"


class PushLimit(grpc.ServerInterceptor):
    """Server interceptor: a semaphore around the PushUpdate handler."""

    def __init__(self, max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.max_concurrent = max_concurrent

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = continuation(details)
        if handler is None or details.method != PUSH_METHOD or handler.stream_unary is None:
            return handler
        inner = handler.stream_unary

        def limited(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
            with self.slots:
                return inner(request_iterator, context)

        return handler._replace(stream_unary=limited)
