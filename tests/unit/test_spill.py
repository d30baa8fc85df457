"""Uploads kept whole for a round: in memory, or spilled to safetensors files and read per layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordinator.spill import Uploads, discard_spill


def update(value: float) -> dict[int, dict[str, torch.Tensor]]:
    return {
        layer: {"a": torch.full((2, 3), value + layer), "b": torch.full((3,), -value, dtype=torch.bfloat16)} for layer in (0, 4)
    }


@pytest.mark.parametrize("spill", [False, True])
def test_put_and_read_back_layer_by_layer(tmp_path: Path, spill: bool) -> None:
    uploads = Uploads(tmp_path / "spill" if spill else None)
    uploads.put("w/1", update(1.0), 3.0)
    uploads.put("w0", update(2.0), 1.0)
    assert uploads.workers() == ["w/1", "w0"] and len(uploads) == 2 and uploads.weight("w/1") == 3.0
    assert uploads.layers("w0") == [0, 4]
    got = uploads.layer("w/1", 4)
    assert sorted(got) == ["a", "b"] and got["b"].dtype == torch.bfloat16
    torch.testing.assert_close(got["a"], torch.full((2, 3), 5.0))
    whole = uploads.get("w0")
    assert sorted(whole) == [0, 4]
    torch.testing.assert_close(whole[4]["a"], torch.full((2, 3), 6.0))
    uploads.clear()
    assert len(uploads) == 0 and not (tmp_path / "spill").exists()


def test_constructing_uploads_touches_no_file_discard_spill_drops_a_dead_round(tmp_path: Path) -> None:
    first = Uploads(tmp_path / "spill")
    first.put("w0", update(1.0), 1.0)
    spilled = sorted((tmp_path / "spill").iterdir())
    Uploads(tmp_path / "spill")  # a reader (export) or a coordinator not yet serving: nothing is deleted
    assert sorted((tmp_path / "spill").iterdir()) == spilled
    discard_spill(tmp_path / "spill")  # the serving coordinator's resume: that round's pushes are re-requested
    assert not (tmp_path / "spill").exists()
    discard_spill(tmp_path / "spill")  # nothing there: fine
