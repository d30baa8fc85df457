"""Per-worker uploads a strategy must keep whole for a round (FedTreeLoRA's tree-building round).

Streaming aggregation keeps O(clusters) tensors; building the client tree needs every worker's
B matrices at once. `Uploads` keeps them in memory (tests, small runs) or, given a directory,
spills each upload to its own safetensors file as it arrives and reads back one layer at a time
(memory-mapped), so the coordinator's memory for a 400-worker tree build is one layer of every
worker's B, not every worker's whole adapter.

Constructing `Uploads` touches no file: a reader of a live coordinator's state must not delete the
uploads its tree is about to be built from. The serving coordinator drops a dead process's spill
explicitly with `discard_spill` when it resumes (RoundEngine.resume).

Uploads kept past their round (the tree members' build-round uploads, for placing late joiners:
coordinator/kept.py) move out of the round's spill directory by a rename (`take`), and an
`index()` written with the strategy's checkpoint finds them again (`from_index`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

Tensors = dict[str, torch.Tensor]
LayerTensors = dict[int, Tensors]


def discard_spill(spill_dir: Path) -> None:
    """Delete the uploads a previous process spilled for a round that died with it (its pushes
    are re-requested). Only the process that serves the state may call this."""
    shutil.rmtree(spill_dir, ignore_errors=True)


class Uploads:
    """worker -> (its whole update, its weight); on disk under `spill_dir` when given."""

    def __init__(self, spill_dir: Path | None = None) -> None:
        self.spill_dir = spill_dir
        self._weights: dict[str, float] = {}
        self._memory: dict[str, LayerTensors] = {}
        self._layers: dict[str, dict[int, list[str]]] = {}  # worker -> layer -> names

    def _path(self, worker: str) -> Path:
        assert self.spill_dir is not None
        return self.spill_dir / f"{hashlib.sha256(worker.encode()).hexdigest()[:24]}.safetensors"

    def put(self, worker: str, update: LayerTensors, weight: float) -> None:
        self._weights[worker] = float(weight)
        self._layers[worker] = {layer: sorted(tensors) for layer, tensors in update.items()}
        if self.spill_dir is None:
            self._memory[worker] = update
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        flat = {f"{layer}/{name}": t.detach().contiguous() for layer, tensors in update.items() for name, t in tensors.items()}
        tmp = self._path(worker).with_suffix(".tmp")
        save_file(flat, str(tmp))
        tmp.replace(self._path(worker))

    def take(self, worker: str, source: Uploads) -> None:
        """Move `worker`'s upload from `source` into this one: a rename when both are spilled on
        one file system (no copy), else its tensors; `source` forgets it."""
        if self.spill_dir is not None and source.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            os.replace(source._path(worker), self._path(worker))
            self._weights[worker], self._layers[worker] = source._weights[worker], source._layers[worker]
        else:
            self.put(worker, source.get(worker), source.weight(worker))
        source._forget(worker)

    def drop(self, worker: str) -> None:
        """Forget `worker`'s upload (and delete its file)."""
        if self.spill_dir is not None and worker in self._weights:
            self._path(worker).unlink(missing_ok=True)
        self._forget(worker)

    def _forget(self, worker: str) -> None:
        self._weights.pop(worker, None)
        self._memory.pop(worker, None)
        self._layers.pop(worker, None)

    def index(self) -> dict[str, Any]:
        """JSON-safe: each worker's weight and tensor names per layer (its file is named by its id)."""
        return {
            "weights": dict(sorted(self._weights.items())),
            "layers": {w: {str(layer): names for layer, names in sorted(ls.items())} for w, ls in sorted(self._layers.items())},
        }

    @classmethod
    def from_index(cls, spill_dir: Path | None, index: dict[str, Any]) -> Uploads:
        """The uploads `index()` described, read from `spill_dir` (None: the index alone, no tensors;
        a read-only view of a coordinator's state never reads them). Touches no file."""
        out = cls(spill_dir)
        out._weights = {str(w): float(x) for w, x in index.get("weights", {}).items()}
        out._layers = {
            str(w): {int(layer): [str(n) for n in names] for layer, names in ls.items()}
            for w, ls in index.get("layers", {}).items()
        }
        return out

    def workers(self) -> list[str]:
        return sorted(self._weights)

    def weight(self, worker: str) -> float:
        return self._weights[worker]

    def layers(self, worker: str) -> list[int]:
        return sorted(self._layers[worker])

    def get(self, worker: str) -> LayerTensors:
        """One worker's whole upload (its file read once when spilled)."""
        if self.spill_dir is None:
            return self._memory[worker]
        with safe_open(str(self._path(worker)), framework="pt") as f:
            return {layer: {n: f.get_tensor(f"{layer}/{n}") for n in names} for layer, names in self._layers[worker].items()}

    def layer(self, worker: str, layer: int) -> Tensors:
        """One layer of one worker's upload (read from its file when spilled)."""
        if self.spill_dir is None:
            return self._memory[worker][layer]
        with safe_open(str(self._path(worker)), framework="pt") as f:
            return {name: f.get_tensor(f"{layer}/{name}") for name in self._layers[worker][layer]}

    def __len__(self) -> int:
        return len(self._weights)

    def clear(self) -> None:
        self._weights.clear()
        self._memory.clear()
        self._layers.clear()
        if self.spill_dir is not None:
            discard_spill(self.spill_dir)
