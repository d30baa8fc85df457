"""The coordinator's state directory: SQLite metadata plus safetensors adapter checkpoints.

Layout:
    state.db                         run facts, workers, pushes, evaluations, rounds
    checkpoints/round-00003.safetensors   strategy tensors after round 3 closed
Every write is atomic: SQLite transactions for metadata; write + fsync + rename for files.

Only the serving coordinator opens it writable. Export and any other offline inspection open it
with `read_only=True`: SQLite in `mode=ro` (no schema creation, no pragmas that write; the WAL
lets it read while a live coordinator writes), no directory created, and every write method
refuses. SQLite may still create its `-wal`/`-shm` side files when none exist; state.db, the
checkpoints and the spill directory are never touched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from common.errors import FailedPrecondition, NotFound
from common.schema import Schema, TensorSpec

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY, num_train_examples INTEGER NOT NULL, joined_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pushes (
    round INTEGER NOT NULL, worker_id TEXT NOT NULL, upload_id TEXT NOT NULL,
    num_examples INTEGER NOT NULL, metrics TEXT NOT NULL, bytes INTEGER NOT NULL, received_at REAL NOT NULL,
    PRIMARY KEY (round, worker_id));
CREATE TABLE IF NOT EXISTS evaluations (
    round INTEGER NOT NULL, worker_id TEXT NOT NULL, metrics TEXT NOT NULL, received_at REAL NOT NULL,
    PRIMARY KEY (round, worker_id));
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, started_at REAL NOT NULL, closed_at REAL NOT NULL,
    participants TEXT NOT NULL, pushes INTEGER NOT NULL, bytes INTEGER NOT NULL, checkpoint TEXT);
"""

KEEP_CHECKPOINTS = 2


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateStore:
    """Thread-safe access to one state directory; `read_only` for anyone but the serving coordinator."""

    def __init__(self, root: Path, read_only: bool = False) -> None:
        self.root = Path(root)
        self.read_only = read_only
        self.checkpoints = self.root / "checkpoints"
        self._lock = threading.Lock()
        db = self.root / "state.db"
        if read_only:
            if not db.is_file():
                raise NotFound(f"no coordinator state in {self.root} (no state.db)")
            self._db = sqlite3.connect(
                f"{db.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
            )
            return
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA_SQL)

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise FailedPrecondition(f"the state in {self.root} is open read-only: {what} refused")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- run facts ---------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM run WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def get_many(self, *keys: str) -> dict[str, Any]:
        """Several run facts read in one statement: one consistent snapshot, even while a live
        coordinator closes a round (e.g. `last_closed_round` with its `strategy_meta`)."""
        marks = ", ".join("?" * len(keys))
        with self._lock:
            rows = self._db.execute(f"SELECT key, value FROM run WHERE key IN ({marks})", keys).fetchall()  # noqa: S608
        return {key: json.loads(value) for key, value in rows}

    def put(self, **values: Any) -> None:
        self._writable("put")
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO run (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def put_schema(self, schema: Schema) -> None:
        self.put(schema={str(layer): [asdict(s) for s in specs.values()] for layer, specs in schema.items()})

    def get_schema(self) -> Schema | None:
        raw = self.get("schema")
        if raw is None:
            return None
        return {
            int(layer): {s["name"]: TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in specs}
            for layer, specs in raw.items()
        }

    # -- workers -----------------------------------------------------------------------------
    def upsert_worker(self, worker_id: str, num_train_examples: int) -> None:
        self._writable("upsert_worker")
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO workers (worker_id, num_train_examples, joined_at) VALUES (?, ?, ?) "
                "ON CONFLICT(worker_id) DO UPDATE SET num_train_examples = excluded.num_train_examples",
                (worker_id, num_train_examples, time.time()),
            )

    def workers(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT worker_id, num_train_examples FROM workers ORDER BY joined_at").fetchall()
        return {w: n for w, n in rows}

    # -- pushes and evaluations --------------------------------------------------------------
    def record_push(
        self, round: int, worker_id: str, upload_id: str, num_examples: int, metrics: dict[str, float], nbytes: int
    ) -> None:
        self._writable("record_push")
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO pushes VALUES (?, ?, ?, ?, ?, ?, ?)",
                (round, worker_id, upload_id, num_examples, json.dumps(metrics), nbytes, time.time()),
            )

    def pushes(self, round: int) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT worker_id, upload_id, num_examples, metrics, bytes FROM pushes WHERE round = ?", (round,)
            ).fetchall()
        return {w: {"upload_id": u, "num_examples": n, "metrics": json.loads(m), "bytes": b} for w, u, n, m, b in rows}

    def discard_pushes(self, round: int) -> int:
        """Forget pushes of a round that was never closed (their sums died with the process)."""
        self._writable("discard_pushes")
        with self._lock, self._db:
            self._db.execute("BEGIN")
            return self._db.execute("DELETE FROM pushes WHERE round = ?", (round,)).rowcount

    def record_evaluation(self, round: int, worker_id: str, metrics: dict[str, float]) -> None:
        self._writable("record_evaluation")
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO evaluations VALUES (?, ?, ?, ?)",
                (round, worker_id, json.dumps(metrics), time.time()),
            )

    def evaluations(self) -> dict[int, dict[str, dict[str, float]]]:
        """round -> worker -> metrics of the model each worker used after that round."""
        with self._lock:
            rows = self._db.execute("SELECT round, worker_id, metrics FROM evaluations ORDER BY round").fetchall()
        out: dict[int, dict[str, dict[str, float]]] = {}
        for rnd, worker, metrics in rows:
            out.setdefault(rnd, {})[worker] = json.loads(metrics)
        return out

    # -- rounds and checkpoints --------------------------------------------------------------
    def close_round(
        self, round: int, started_at: float, participants: list[str], tensors: dict[str, torch.Tensor], extra: dict[str, Any]
    ) -> Path:
        """Checkpoint a closed round: tensors file first (atomic), then the metadata transaction."""
        self._writable("close_round")
        path = self.checkpoints / f"round-{round:05d}.safetensors"
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"round": str(round)})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.checkpoints)
        pushes = self.pushes(round)
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    round,
                    started_at,
                    time.time(),
                    json.dumps(participants),
                    len(pushes),
                    sum(p["bytes"] for p in pushes.values()),
                    path.name,
                ),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO run (key, value) VALUES (?, ?)",
                [("last_closed_round", json.dumps(round))] + [(k, json.dumps(v)) for k, v in extra.items()],
            )
        for old in sorted(self.checkpoints.glob("round-*.safetensors"))[:-KEEP_CHECKPOINTS]:
            old.unlink()
        return path

    def last_closed_round(self) -> int:
        return int(self.get("last_closed_round") or 0)

    def load_checkpoint(self, round: int) -> dict[str, torch.Tensor]:
        """The tensors checkpointed after `round`; empty when that checkpoint is not (or no longer) there."""
        path = self.checkpoints / f"round-{round:05d}.safetensors"
        try:
            return load_file(str(path))
        except FileNotFoundError:  # rotated away (KEEP_CHECKPOINTS) or never written
            return {}

    def has_checkpoint(self, round: int) -> bool:
        return (self.checkpoints / f"round-{round:05d}.safetensors").is_file()

    def rounds(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT round, started_at, closed_at, participants, pushes, bytes FROM rounds ORDER BY round"
            ).fetchall()
        return [
            {"round": r, "started_at": s, "closed_at": c, "participants": json.loads(p), "pushes": n, "bytes": b}
            for r, s, c, p, n, b in rows
        ]
