"""Regenerate the protobuf modules into a temporary tree and fail if they differ from the committed ones.

Run by `make proto-check` and by tests/unit/test_proto_drift.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = Path("proto/fedtree/v1")


def drift() -> list[str]:
    """Names of generated files that are missing or differ; empty when in sync."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / PROTO_DIR).mkdir(parents=True)
        protos = sorted((ROOT / PROTO_DIR).glob("*.proto"))
        for proto in protos:
            shutil.copy(proto, out / PROTO_DIR / proto.name)
        cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.", "--grpc_python_out=.", "--mypy_out=."]
        subprocess.run(cmd + [str(PROTO_DIR / p.name) for p in protos], cwd=out, check=True, capture_output=True)
        for generated in sorted((out / PROTO_DIR).iterdir()):
            if generated.suffix == ".proto":
                continue
            committed = ROOT / PROTO_DIR / generated.name
            if not committed.exists() or committed.read_bytes() != generated.read_bytes():
                problems.append(str(PROTO_DIR / generated.name))
    return problems


if __name__ == "__main__":
    bad = drift()
    if bad:
        print("generated protobuf code is out of date; run `make proto` and commit:", *bad, sep="\n  ")
        raise SystemExit(1)
    print("protobuf code matches its .proto sources")
