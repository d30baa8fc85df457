"""Transfer limits: never more than N PushUpdate / M PullAdapters handlers at once; other methods untouched."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from coordinator.limits import PULL_METHOD, PUSH_METHOD, TransferLimit


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_at_most_n_pushes_run_at_once() -> None:
    running, peak, lock = [0], [0], threading.Lock()

    def push(requests: Iterator[Any], context: Any) -> str:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return "ok"

    handler = TransferLimit(2, 1).intercept_service(lambda d: grpc.stream_unary_rpc_method_handler(push), Details(PUSH_METHOD))
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(handler.stream_unary(iter(()), None))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["ok"] * 6 and peak[0] == 2


def test_a_failing_push_gives_its_slot_back() -> None:
    def push(requests: Iterator[Any], context: Any) -> str:
        raise RuntimeError("bad push")

    limit = TransferLimit(1, 1)
    handler = limit.intercept_service(lambda d: grpc.stream_unary_rpc_method_handler(push), Details(PUSH_METHOD))
    for _ in range(3):  # would block forever on the second call if the slot leaked
        with pytest.raises(RuntimeError):
            handler.stream_unary(iter(()), None)


def test_other_methods_pass_through() -> None:
    original = grpc.unary_unary_rpc_method_handler(lambda r, c: r)
    assert TransferLimit(1, 1).intercept_service(lambda d: original, Details("/fedtree.v1.Federation/Join")) is original
    with pytest.raises(ValueError):
        TransferLimit(0, 1)


def test_a_pull_holds_its_slot_while_streaming_and_gives_it_back_when_cancelled() -> None:
    def pull(request: Any, context: Any) -> Iterator[int]:
        yield from range(3)

    limit = TransferLimit(1, 1)
    handler = limit.intercept_service(lambda d: grpc.unary_stream_rpc_method_handler(pull), Details(PULL_METHOD))
    first = handler.unary_stream(None, None)
    assert next(first) == 0
    assert not limit.pull_slots.acquire(blocking=False)  # taken while the stream is open
    first.close()  # the worker went away mid-stream
    assert list(handler.unary_stream(None, None)) == [0, 1, 2]
