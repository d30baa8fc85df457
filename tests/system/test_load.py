"""Load: 30 concurrent light workers (random LoRA-shaped tensors) against a coordinator process,
2 rounds: no update lost or counted twice and the aggregate equals the mean of the pushes
(bench/load.py does the checking; `make bench-load` runs it with 100 workers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.system
def test_thirty_light_workers_two_rounds() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/load.py", "--workers", "30", "--rounds", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| 30 | 2 | 60 | none |" in proc.stdout
