"""Bearer-token authentication per service: the worker token for Federation, the admin token
for Admin, never one for the other. Health checks and reflection stay open."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc

FEDERATION_PREFIX = "/fedtree.v1.Federation/"
ADMIN_PREFIX = "/fedtree.v1.Admin/"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a token."""
    return (("authorization", f"Bearer {token}"),)


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


def _deny(code: grpc.StatusCode, message: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class TokenAuth(grpc.ServerInterceptor):
    def __init__(self, worker_token: str | None, admin_token: str | None) -> None:
        self.worker_token = worker_token
        self.admin_token = admin_token

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = continuation(details)
        method = details.method or ""
        if handler is None or not method.startswith((FEDERATION_PREFIX, ADMIN_PREFIX)):
            return handler
        token = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[len("Bearer ") :]
        problem = self._check(method, token)
        return handler if problem is None else _deny(*problem, handler)

    def _check(self, method: str, token: str | None) -> tuple[grpc.StatusCode, str] | None:
        if method.startswith(ADMIN_PREFIX):
            if self.admin_token is None:
                return grpc.StatusCode.UNAUTHENTICATED, "the admin API is disabled: start the coordinator with admin_token set"
            if token is None:
                return (
                    grpc.StatusCode.UNAUTHENTICATED,
                    "admin call without a token (metadata authorization: Bearer <admin token>)",
                )
            if _same(token, self.admin_token):
                return None
            if _same(token, self.worker_token):
                return grpc.StatusCode.PERMISSION_DENIED, "a worker token does not grant admin access"
            return grpc.StatusCode.UNAUTHENTICATED, "wrong admin token"
        if _same(token, self.admin_token):
            return grpc.StatusCode.PERMISSION_DENIED, "the admin token cannot act as a worker"
        if self.worker_token is None or _same(token, self.worker_token):
            return None
        return grpc.StatusCode.UNAUTHENTICATED, "missing or wrong worker token"
