"""Run an iterator ahead of its consumer, on a thread of its own, a bounded number of items ahead.

gRPC's stream calls take one message at a time and wait for each to be sent (client side) or ask
for the next only when the handler wants it (server side), so the work that makes or checks a
message and the transfer of the one before it would otherwise take turns. `ahead` lets them
overlap: a producer thread fills a queue of at most `depth` items, the consumer takes from it.
Memory stays bounded by `depth` items (the chunk window), not by the stream.

The producer's exception reaches the consumer at the point where it happened; a consumer that
stops early (the call failed, the generator was closed) stops the producer too.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

T = TypeVar("T")

_POLL_S = 0.1  # how often a producer blocked on a full queue checks whether the consumer left


class _End:
    pass


_END = _End()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def ahead(source: Iterable[T], depth: int, name: str = "prefetch") -> Generator[T, None, None]:
    """Yield `source`'s items, produced on another thread up to `depth` items ahead. Close the
    generator (or let it go) to stop the producer when leaving before the end."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    items: queue.Queue[T | _End | _Failed] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: T | _End | _Failed) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Failed(exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            got = items.get()
            if isinstance(got, _End):
                return
            if isinstance(got, _Failed):
                raise got.exc
            yield got
    finally:
        stop.set()
