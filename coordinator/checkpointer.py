"""Writes the checkpoint of each closed round (StateStore.close_round: file, fsync, rename, then
the metadata transaction), inline or on a thread of its own.

Durability is not negotiable: the next round does not open before its predecessor's checkpoint
is on disk (the engine asks `pending` first). It need not delay the acknowledgement of the push
that closed the round, though: in the background mode that push is acknowledged at once and
the checkpoint is written while the workers ask for their next task. A write that fails is
logged and retried (with back-off) until it succeeds or the coordinator stops; until then no
round opens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from coordinator.state import StateStore

log = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


@dataclass(frozen=True)
class Checkpoint:
    """What a closed round leaves on disk. The tensors are the strategy's own (not copies): the
    strategy changes them only once the next round opens, i.e. after this is written."""

    round: int
    started_at: float
    participants: list[str]
    tensors: dict[str, torch.Tensor]
    extra: dict[str, Any]


class Checkpointer:
    def __init__(self, store: StateStore, background: bool = False, on_durable: Callable[[], None] | None = None) -> None:
        """`background`: write on a thread and call `on_durable` (without any lock held) once the
        checkpoint is on disk; else write inline, in `write`."""
        self.store = store
        self.background = background
        self._on_durable = on_durable
        self._lock = threading.Lock()
        self._pending: int | None = None
        self._done = threading.Event()
        self._done.set()
        self._stopping = threading.Event()

    @property
    def pending(self) -> int | None:
        """The round whose checkpoint is being written; None when every closed round is on disk."""
        with self._lock:
            return self._pending

    def write(self, checkpoint: Checkpoint) -> None:
        if not self.background:
            self._write(checkpoint)
            return
        with self._lock:
            if self._pending is not None:  # the engine opens no round before the last one is durable
                raise RuntimeError(f"checkpoint of round {self._pending} still pending when round {checkpoint.round} closed")
            self._pending = checkpoint.round
            self._done.clear()
        threading.Thread(target=self._run, args=(checkpoint,), name=f"checkpoint-{checkpoint.round}", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no checkpoint is pending; False on timeout."""
        return self._done.wait(timeout)

    def stop(self, timeout: float | None = None) -> bool:
        """Let a pending write finish (up to `timeout`), but retry a failing one no more; True
        when every closed round is on disk."""
        self._stopping.set()
        return self.wait(timeout) and self.pending is None

    def _write(self, checkpoint: Checkpoint) -> None:
        started = time.perf_counter()
        path = self.store.close_round(
            checkpoint.round, checkpoint.started_at, checkpoint.participants, checkpoint.tensors, checkpoint.extra
        )
        log.info("[Checkpoint] round %d on disk: %s (%.2f s)", checkpoint.round, path.name, time.perf_counter() - started)

    def _run(self, checkpoint: Checkpoint) -> None:
        delay = RETRY_FIRST_S
        try:
            while True:
                try:
                    self._write(checkpoint)
                    break
                except Exception:  # noqa: BLE001 - a failed write is retried; no round opens meanwhile
                    log.exception("[Checkpoint] round %d could not be written; retrying in %.0f s", checkpoint.round, delay)
                    if self._stopping.wait(delay):
                        log.error("[Checkpoint] round %d not written: the coordinator stopped", checkpoint.round)
                        return
                    delay = min(2 * delay, RETRY_MAX_S)
            with self._lock:
                self._pending = None
        finally:
            self._done.set()
        if self._on_durable is not None:
            self._on_durable()
