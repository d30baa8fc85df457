"""`make proto-check` as a test: the committed generated code matches the .proto sources."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proto_drift import drift  # noqa: E402


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools not installed (pip install -e '.[dev]')")
def test_generated_code_matches_proto_sources() -> None:
    assert drift() == [], "generated protobuf code is stale: run `make proto` and commit"
