"""The tree members' uploads, kept past the round that built the tree, to place late joiners.

Placing a worker that joins after the tree is built needs the distance from its upload to every
member's upload of the build round (coordinator/tree/placement.py). `MemberUploads` keeps them:
at the build, the round's spilled uploads move (by rename, no copy) into a generation directory
`<root>/round-<build round>`; a placed late joiner's upload joins it; the strategy reads one
layer of every member at a time, as the build did. Without a root (tests, a read-only view) they
stay in memory, or, restored from a checkpoint's index, only their index is known.

The root is `<state dir>/tree-members` (`members_dir`), beside the per-round spill directory,
which a restarted coordinator discards: these outlive the round. A build prunes every generation
but its own and the one before it, which the last checkpoint (written after the build's round
closes) may still name. The strategy's checkpoint meta holds `meta()` (the generation and the
index), and a restart finds the files again with `load`; constructing or loading touches no file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from coordinator.spill import Tensors, Uploads

MEMBERS_DIR = "tree-members"


def members_dir(spill_dir: Path | None) -> Path | None:
    """Where a strategy that spills to `spill_dir` (<state dir>/spill) keeps its members' uploads."""
    return None if spill_dir is None else spill_dir.parent / MEMBERS_DIR


class MemberUploads:
    """worker -> its upload (every layer's A and B) and weight, from the round that placed it in the tree."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self.generation = 0  # the build round whose directory holds them (0: none yet)
        self.uploads = Uploads(None)

    def _dir(self, generation: int) -> Path | None:
        return None if self.root is None else self.root / f"round-{generation:05d}"

    def keep_build(self, round: int, build: Uploads) -> None:
        """Start over with the uploads of the round that (re)built the tree; `build` is left empty."""
        previous = self.generation
        self.generation = round
        self.uploads = Uploads(self._dir(round))
        for worker in build.workers():
            self.uploads.take(worker, build)
        self._prune(keep={previous, round})

    def add(self, worker: str, source: Uploads) -> None:
        """A placed late joiner's upload (moved out of `source`)."""
        self.uploads.take(worker, source)

    def drop(self, worker: str) -> None:
        self.uploads.drop(worker)

    def workers(self) -> list[str]:
        return self.uploads.workers()

    def weight(self, worker: str) -> float:
        return self.uploads.weight(worker)

    def layer(self, worker: str, layer: int) -> Tensors:
        return self.uploads.layer(worker, layer)

    def __len__(self) -> int:
        return len(self.uploads)

    def _prune(self, keep: set[int]) -> None:
        if self.root is None or not self.root.is_dir():
            return
        names = {f"round-{g:05d}" for g in keep}
        for path in self.root.iterdir():
            if path.name.startswith("round-") and path.name not in names:
                shutil.rmtree(path, ignore_errors=True)

    # -- persistence (in the strategy's checkpoint meta) ------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"generation": self.generation, "dir": f"round-{self.generation:05d}", **self.uploads.index()}

    @classmethod
    def load(cls, root: Path | None, meta: dict[str, Any]) -> MemberUploads:
        out = cls(root)
        out.generation = int(meta.get("generation", 0))
        out.uploads = Uploads.from_index(None if root is None else root / str(meta["dir"]), meta)
        return out
