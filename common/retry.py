"""The worker's one retry layer and its deadlines: when a failed call is tried again, and how long
any call may take. Nothing else in fedtree retries (common/grpc_options.py sets no retryPolicy).

Why here and not in the channel's service config: gRPC's own retries cannot re-send a streamed
push or pull once a message went out, count attempts instead of time, and are invisible to the
worker's log. This loop covers every call alike, waits `retry_for_s` in all (the worker's
`connect_timeout_s`), logs each retry and ends in a typed `Unavailable` that names the call and
the coordinator. Having both layers multiplied them: the channel retried up to 5 times inside
each of the loop's attempts.

Which failures are retried (RETRYABLE_CODES), and why that is safe: every call of the worker can
run twice without harm -- GetRun, GetTask and PullAdapters only read, Join upserts the worker,
ReportMetrics overwrites, and a PushUpdate is idempotent by its upload id (a retry after a lost
ack is acknowledged as a duplicate and counted once).
- UNAVAILABLE: the coordinator is not up yet, restarting, draining, or the connection broke.
  Calls do not wait for the channel to be ready (no `wait_for_ready`): an attempt on a channel
  that cannot connect fails with UNAVAILABLE and the transport's reason (name not resolved,
  connection refused, certificate not for this name, ...), which common/unreachable.py turns
  into words; this loop is what waits. A cause is logged once in full, then every
  REPEAT_LOG_S while it lasts.
- DEADLINE_EXCEEDED: retried too. A GetTask long poll is answered before its deadline (the
  coordinator holds it at most `wait_s`, and the deadline adds GET_TASK_SLACK_S), and a transfer
  has minutes: a passed deadline means a stuck peer or network, which a new attempt may get past.

Stopping: given a `stop` event, the loop ends within one wait of it being set (the worker's
SIGTERM/SIGINT handler sets it and closes the channel, which cancels the attempt in flight) by
raising `Stopped`, never by retrying on.
Everything else (INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND, PERMISSION_DENIED, ...) is an
answer, raised at once as the matching FedtreeError: retrying it would hide bugs or bad input.

Heartbeats are outside this layer: best effort, one attempt each, the next one a period later.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

from common.errors import Unavailable, from_rpc_error
from common.unreachable import diagnose

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_CODES: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# Exponential backoff with full jitter (sleep uniform in [0, delay]): workers that lost the
# coordinator together do not all come back in the same instant when it restarts.
INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
BACKOFF_MULTIPLIER = 2.0
RETRY_FOR_S = 600.0  # WorkerConfig.connect_timeout_s: give up after the coordinator is gone this long
REPEAT_LOG_S = 60.0  # an unchanged cause of failure is logged again after this long, not on every retry


class Stopped(Exception):  # noqa: N818 - a request, not an error
    """The worker was asked to stop (SIGTERM/SIGINT) while waiting on the coordinator."""


# -- deadlines of one attempt (WorkerConfig fields default to these) -------------------------------
# The coordinator holds an idle GetTask at most CoordinatorConfig.long_poll_s; a worker asks for
# the same wait (WorkerConfig.task_wait_s), so by default neither side cuts the other's poll short.
DEFAULT_LONG_POLL_S = 10.0
# A GetTask's deadline is its wait plus this: room for the network and a busy coordinator.
GET_TASK_SLACK_S = 10.0
# GetRun, Join, ReportMetrics (and Heartbeat, capped by its period): small messages, no waiting.
CALL_TIMEOUT_S = 30.0
# PullAdapters and PushUpdate: a whole adapter streams in one call.
TRANSFER_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RetryPolicy:
    """How the worker's client retries: which codes, how long in all, and the backoff."""

    retry_for_s: float = RETRY_FOR_S
    initial_backoff_s: float = INITIAL_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    multiplier: float = BACKOFF_MULTIPLIER
    codes: frozenset[grpc.StatusCode] = RETRYABLE_CODES

    def delays(self) -> Iterator[float]:
        """The backoff caps, attempt after attempt: initial, x multiplier, ..., never above the max."""
        delay = self.initial_backoff_s
        while True:
            yield min(delay, self.max_backoff_s)
            delay = min(delay * self.multiplier, self.max_backoff_s)


def call_with_retry(
    fn: Callable[[], T],
    what: str,
    target: str,
    policy: RetryPolicy,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[float, float], float] = random.uniform,
    stop: threading.Event | None = None,
) -> T:
    """Run `fn` (one attempt of the call `what` to `target`), retrying `policy.codes` with
    backoff until `policy.retry_for_s` have passed; then raise Unavailable. Any other failure is
    raised at once as its FedtreeError; a set `stop` ends the loop with Stopped."""
    started = clock()
    give_up = started + policy.retry_for_s
    delays = policy.delays()
    attempts = 0
    log_state = _LogState()
    while True:
        if stop is not None and stop.is_set():
            raise Stopped(f"stopped during {what}")
        attempts += 1
        try:
            return fn()
        except grpc.RpcError as exc:
            if stop is not None and stop.is_set():  # the attempt was cancelled by the stop
                raise Stopped(f"stopped during {what}") from None
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code not in policy.codes:
                raise from_rpc_error(exc) from None
            name = code.name if code is not None else "?"
            reason = diagnose(details, target).message if code == grpc.StatusCode.UNAVAILABLE else f"{name}: {details}"
            left = give_up - clock()
            if left <= 0:
                raise Unavailable(
                    f"coordinator {target} unreachable for {policy.retry_for_s:.0f} s during {what} "
                    f"({attempts} attempts): {reason}"
                ) from None
            pause = min(jitter(0.0, next(delays)), left)
            log_state.log(what, reason, attempts, clock() - started, pause, clock())
            if stop is not None:
                if stop.wait(pause):
                    raise Stopped(f"stopped during {what}") from None
            else:
                sleep(pause)


@dataclass
class _LogState:
    """A cause of failure in full when it first shows (or changes), then every REPEAT_LOG_S."""

    reason: str = ""
    logged_at: float = float("-inf")

    def log(self, what: str, reason: str, attempts: int, waited_s: float, pause: float, now: float) -> None:
        if reason != self.reason:
            log.warning("[Worker.%s] %s; retrying (every <= %.0f s) until it answers", what, reason, MAX_BACKOFF_S)
        elif now - self.logged_at >= REPEAT_LOG_S:
            log.warning("[Worker.%s] still failing after %d attempts in %.0f s: %s", what, attempts, waited_s, reason)
        else:
            log.debug("[Worker.%s] %s; retrying in %.1f s", what, reason, pause)
            return
        self.reason, self.logged_at = reason, now
