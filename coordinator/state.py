"""The coordinator's state directory: SQLite metadata plus safetensors adapter checkpoints.

Layout:
    state.db                         run facts, workers, pushes, evaluations, rounds
    checkpoints/round-00003.safetensors   strategy tensors after round 3 closed
Every write is atomic: SQLite transactions for metadata; write + fsync + rename for files.
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateStore:
    """Thread-safe access to one state directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "state.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA_SQL)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- run facts ---------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM run WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, **values: Any) -> None:
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
        with self._lock, self._db:
            self._db.execute("BEGIN")
            return self._db.execute("DELETE FROM pushes WHERE round = ?", (round,)).rowcount

    def record_evaluation(self, round: int, worker_id: str, metrics: dict[str, float]) -> None:
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
        path = self.checkpoints / f"round-{round:05d}.safetensors"
        return load_file(str(path)) if path.exists() else {}

    def rounds(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT round, started_at, closed_at, participants, pushes, bytes FROM rounds ORDER BY round"
            ).fetchall()
        return [
            {"round": r, "started_at": s, "closed_at": c, "participants": json.loads(p), "pushes": n, "bytes": b}
            for r, s, c, p, n, b in rows
        ]
