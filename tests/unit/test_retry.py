"""The worker's one retry layer (common/retry.py): which codes retry, bounded backoff, giving up."""

from __future__ import annotations

import grpc
import pytest

from common.config import CoordinatorConfig, WorkerConfig
from common.errors import FailedPrecondition, FedtreeError, InvalidArgument, NotFound, PermissionDenied, Unavailable
from common.grpc_options import CHANNEL_OPTIONS
from common.retry import MAX_BACKOFF_S, RetryPolicy, call_with_retry
from worker.client import FederationClient


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"fake {self._code.name.lower()}"


class Rig:
    """A fake clock that sleeping advances, and a call that fails with `codes` before it answers."""

    def __init__(self, *codes: grpc.StatusCode, forever: grpc.StatusCode | None = None) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.codes = list(codes)
        self.forever = forever
        self.attempts = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def call(self) -> str:
        self.attempts += 1
        self.now += 0.01  # an attempt takes a little time
        if self.codes:
            raise FakeRpcError(self.codes.pop(0))
        if self.forever is not None:
            raise FakeRpcError(self.forever)
        return "answer"

    def run(self, policy: RetryPolicy, jitter: object = None) -> str:
        return call_with_retry(
            self.call, "GetTask", "coord:1", policy, clock=self.clock, sleep=self.sleep, jitter=jitter or (lambda a, b: b)
        )


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_transport_failures_are_retried(code: grpc.StatusCode) -> None:
    rig = Rig(code, code)
    assert rig.run(RetryPolicy(retry_for_s=60)) == "answer"
    assert rig.attempts == 3 and rig.sleeps == [0.5, 1.0]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.INTERNAL, FedtreeError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, FedtreeError),
    ],
)
def test_answers_are_raised_at_once(code: grpc.StatusCode, error: type[FedtreeError]) -> None:
    rig = Rig(code)
    with pytest.raises(error, match=code.name):
        rig.run(RetryPolicy(retry_for_s=60))
    assert rig.attempts == 1 and rig.sleeps == []


def test_backoff_doubles_to_its_cap_and_jitter_stays_under_it() -> None:
    policy = RetryPolicy()
    delays = policy.delays()
    assert [next(delays) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    rig = Rig(forever=grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(Unavailable):
        rig.run(RetryPolicy(retry_for_s=300), jitter=lambda lo, hi: (lo + hi) / 2)  # full jitter: in [0, cap]
    assert rig.sleeps[:3] == [0.25, 0.5, 1.0] and max(rig.sleeps) <= MAX_BACKOFF_S / 2


def test_gives_up_after_retry_for_s_with_a_clear_unavailable() -> None:
    rig = Rig(forever=grpc.StatusCode.UNAVAILABLE)
    start = rig.now
    with pytest.raises(Unavailable) as info:
        rig.run(RetryPolicy(retry_for_s=60))
    message = str(info.value)
    assert "coordinator coord:1 unreachable for 60 s during GetTask" in message
    assert f"{rig.attempts} attempts" in message and "cannot reach coord:1: fake unavailable" in message
    assert 60 <= rig.now - start <= 60 + 0.02  # kept trying for the whole window, then stopped
    assert sum(rig.sleeps) <= 60 and max(rig.sleeps) <= MAX_BACKOFF_S


def test_one_retry_layer_the_channel_has_no_retry_policy() -> None:
    assert "grpc.service_config" not in dict(CHANNEL_OPTIONS)
    client = FederationClient("127.0.0.1:1", "w", retry_for_s=5.0, insecure=True)
    try:
        assert client.retry == RetryPolicy(retry_for_s=5.0)
    finally:
        client.close()


def test_the_workers_task_wait_defaults_to_the_coordinators_long_poll() -> None:
    assert WorkerConfig().task_wait_s == CoordinatorConfig().long_poll_s
