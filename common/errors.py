"""One error hierarchy for fedtree and the one table that maps it to gRPC status codes."""

from __future__ import annotations

import grpc


class FedtreeError(Exception):
    """Base class of every error fedtree raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(FedtreeError):
    """The request is malformed: bad bytes, wrong names, shapes or dtypes, NaN, bad config."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(FedtreeError):
    """The request is well formed but does not fit the run's state (stale round, wrong model)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(FedtreeError):
    """An unknown worker, round or object."""

    code = grpc.StatusCode.NOT_FOUND


class Unauthenticated(FedtreeError):
    """Missing or wrong credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(FedtreeError):
    """Valid credentials that are not allowed to do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(FedtreeError):
    """The service is draining or not ready; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class ConfigError(FedtreeError):
    """A configuration file or environment override is invalid."""

    code = grpc.StatusCode.INVALID_ARGUMENT


# gRPC status code -> error class, for clients that turn an RpcError back into a domain error.
_BY_CODE: dict[grpc.StatusCode, type[FedtreeError]] = {
    cls.code: cls for cls in (InvalidArgument, FailedPrecondition, NotFound, Unauthenticated, PermissionDenied, Unavailable)
}


def status_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status code for any exception; unknown exceptions are INTERNAL."""
    return error.code if isinstance(error, FedtreeError) else grpc.StatusCode.INTERNAL


def from_rpc_error(error: grpc.RpcError) -> FedtreeError:
    """Turn a failed call's status back into the matching FedtreeError."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    cls = _BY_CODE.get(code, FedtreeError)
    return cls(f"{code.name}: {details}")
