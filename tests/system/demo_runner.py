"""Run `python -m coordinator.demo` as a subprocess for system tests (real processes, loopback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_demo(out: Path, *args: str, timeout: float = 280) -> str:
    """Run the demo into `out` with `args`; assert success (showing the logs if not); return stdout."""
    cmd = [sys.executable, "-m", "coordinator.demo", *args, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    log = out / "logs" / "coordinator.log"
    assert proc.returncode == 0, proc.stdout + proc.stderr + (log.read_text() if log.exists() else "")
    return proc.stdout
