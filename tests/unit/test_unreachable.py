"""Why the coordinator cannot be reached (common/unreachable.py), from gRPC's own details as
grpcio 1.7x reports them (seen on this machine), and how the retry layer logs and stops."""

from __future__ import annotations

import logging
import threading
import time

import grpc
import pytest

from common.retry import RetryPolicy, Stopped, call_with_retry
from common.unreachable import diagnose

TARGET = "coord-host:50051"
CASES = [
    (
        "errors resolving coord-host:50051: [field:hostname lookup error:address lookup failed for coord-host:50051: "
        "Domain name not found]",
        "dns",
        "cannot resolve coord-host",
    ),
    (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: "
        "Connection refused",
        "refused",
        "connection refused by coord-host:50051",
    ),
    (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:44057: Custom verification check "
        "failed with error: UNAUTHENTICATED: Hostname Verification Check failed.",
        "tls-name",
        "certificate is not for coord-host",
    ),
    (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:44057: Tls handshake failed "
        "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1a000064:ECDSA routines:OPENSSL_internal:BAD_SIGNATURE",
        "tls-ca",
        "not signed by this worker's tls.ca",
    ),
    (
        "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:44057: Socket closed",
        "tls-plaintext",
        "TLS and the other plaintext",
    ),
    ("something new", "other", "cannot reach coord-host:50051: something new"),
]


@pytest.mark.parametrize(("details", "cause", "says"), CASES, ids=[c[1] for c in CASES])
def test_each_cause_is_named_with_what_to_check(details: str, cause: str, says: str) -> None:
    found = diagnose(details, TARGET)
    assert found.cause == cause and says in found.message


class Refused(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return CASES[1][0]


def _refused() -> str:
    raise Refused()


def test_a_cause_is_logged_once_then_seldom(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    with caplog.at_level(logging.DEBUG, logger="common.retry"), pytest.raises(Exception, match="connection refused by"):
        call_with_retry(_refused, "GetRun", TARGET, RetryPolicy(retry_for_s=100.0), clock=lambda: now[0], sleep=sleep)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "connection refused by coord-host:50051" in warnings[0]
    assert len(warnings) <= 3, warnings  # once, then every REPEAT_LOG_S (60 s) of 100 s: not on every retry
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) >= 3


def test_stop_ends_a_retry_wait_at_once() -> None:
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        call_with_retry(_refused, "GetRun", TARGET, RetryPolicy(retry_for_s=600.0, initial_backoff_s=30.0), stop=stop)
    assert time.monotonic() - started < 2.0


def test_a_set_stop_means_no_attempt() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        call_with_retry(lambda: "answer", "GetRun", TARGET, RetryPolicy(), stop=stop)
