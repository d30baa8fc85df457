"""System-test fixtures: `hosts`, separate network namespaces on a private bridge (see netns.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netns  # noqa: E402 - tests/system is not a package


@pytest.fixture
def hosts() -> Iterator[Callable[..., dict[str, netns.Host]]]:
    """`hosts("coord", "w0", ...)` -> {name: Host}: one namespace per host, joined by a bridge in its
    own namespace, on a private 10.213.x.0/24. Processes started with Host.run() are killed and every
    namespace is removed at teardown, also when the test fails. Skips unless root with `ip netns`."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    netns.cleanup_stale()
    networks: list[netns.Network] = []

    def make(*names: str) -> dict[str, netns.Host]:
        net = netns.Network.create(list(names))
        networks.append(net)
        return net.hosts

    yield make
    errors = []
    for net in networks:
        try:
            net.close()
        except Exception as exc:  # noqa: BLE001 - close every network, then report
            errors.append(str(exc))
    assert not errors, errors
