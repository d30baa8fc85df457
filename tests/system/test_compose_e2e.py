"""System test: the container deployment end to end (deploy/compose_e2e.sh).

A private dockerd, the base image (debootstrap, cached under ~/.cache/fedtree), the fedtree image
(classic builder; the deps stage is cached as a tarball keyed on Dockerfile + pyproject.toml),
`docker-compose up -d`, 2 closed rounds observed through the published Admin API, every worker
exiting 0, and a full teardown. Needs root, dockerd, docker-compose and debootstrap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "compose_e2e.sh"
TIMEOUT_S = 15 * 60


def _skip_reason() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root: the test starts its own dockerd"
    missing = [tool for tool in ("dockerd", "docker-compose", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return (
            f"{', '.join(missing)} not installed (apt-get install docker.io docker-compose debootstrap; `make install` does it)"
        )
    return None


@pytest.mark.system
@pytest.mark.compose
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_compose_federation_end_to_end() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "PYTHON": sys.executable, "E2E_TIMEOUT_S": str(TIMEOUT_S - 60)}
    proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM (not SIGKILL) so the script's trap tears down its dockerd, mounts and data dir
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=300)
        pytest.fail(f"compose e2e did not finish in {TIMEOUT_S} s\n{stdout}\n--- stderr ---\n{stderr[-20000:]}")
    out = stdout + "\n--- stderr ---\n" + stderr[-20000:]
    assert proc.returncode == 0, out
    assert "compose-e2e: OK" in stdout, out
    for i in range(4):
        assert f"worker-{i} exit code 0" in stdout, out
        assert f"client-{i}" in stdout, out
