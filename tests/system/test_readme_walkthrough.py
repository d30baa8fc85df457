"""The README's "Running a federation by hand", run as written: its bash blocks, in order, in one
shell, in a temporary directory, with a free port instead of 50051. Nothing else is substituted:
the names the workers dial are in the coordinator's certificate (`--coordinator-names`), so the
docs can never drift from what works."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Running a federation by hand"
DEFAULT_PORT = "50051"

pytestmark = [pytest.mark.system, pytest.mark.minilm, pytest.mark.corpora, pytest.mark.timeout(900)]


def walkthrough_blocks(readme: str) -> list[str]:
    """The bash blocks of the README's by-hand section, in order."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start : end if end != -1 else None]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_section_is_found_and_complete() -> None:
    blocks = walkthrough_blocks((ROOT / "README.md").read_text())
    script = "\n".join(blocks)
    assert len(blocks) >= 4, blocks
    for step in ("fedtree-prepare", "coordinator.certs", "fedtree-coordinator", "fedtree-worker", "fedtree admin tree"):
        assert step in script, f"the walkthrough lost its {step} step"
    assert script.count("fedtree-worker ") == 2, "the walkthrough is for two sites"


def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = "\n".join(walkthrough_blocks((ROOT / "README.md").read_text()))
    script = script.replace(DEFAULT_PORT, str(free_port()))
    env = {
        **os.environ,
        # the repository under test first, whatever an editable install points at
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    for key in [k for k in env if k.startswith("FEDTREE_ADMIN")]:
        del env[key]
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the walkthrough's background processes share its process group
    )
    try:
        out, _ = proc.communicate(timeout=840)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    took = time.monotonic() - started
    run_dir = tmp_path / "fedtree-by-hand"
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(run_dir.glob("*.log")) if p.is_file())
    assert proc.returncode == 0, f"walkthrough failed after {took:.0f} s:\n{out}\n{logs}"
    assert "round 1 closed" in out, out
    assert "client tree (average linkage)" in out, out
    assert re.search(r"layer +0: 1 cluster\(s\) +\{site-a site-b\}", out), out
    for site in ("a", "b"):
        assert (run_dir / f"out-{site}" / "adapter" / "adapter_config.json").exists(), logs
    print(f"README walkthrough: {took:.0f} s from the first command to the tree")
