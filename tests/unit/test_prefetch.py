"""common.prefetch.ahead: same items in the same order, bounded look-ahead, errors where they
happened, and a producer that stops when the consumer leaves."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from common.prefetch import ahead


def test_items_come_in_order() -> None:
    assert list(ahead(range(100), 3)) == list(range(100))
    assert list(ahead([], 1)) == []


def test_the_producer_runs_at_most_depth_items_ahead() -> None:
    produced: list[int] = []

    def source() -> Iterator[int]:
        for i in range(50):
            produced.append(i)
            yield i

    gen = ahead(source(), 4)
    assert next(gen) == 0
    time.sleep(0.3)  # let the producer run as far as it may
    # 1 taken + 4 queued + 1 produced and waiting to be queued
    assert len(produced) <= 6
    gen.close()


def test_an_error_reaches_the_consumer_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("broken at 3")

    gen = ahead(source(), 8)
    assert [next(gen), next(gen)] == [1, 2]
    with pytest.raises(ValueError, match="broken at 3"):
        next(gen)


def test_closing_early_stops_the_producer() -> None:
    started = threading.active_count()
    finished = threading.Event()

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            finished.set()

    gen = ahead(endless(), 2, name="endless")
    assert next(gen) == 0
    gen.close()
    assert finished.wait(5)  # the producer left its loop (and closed its source)
    deadline = time.monotonic() + 5
    while threading.active_count() > started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= started


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth must be at least 1"):
        next(ahead([1], 0))
