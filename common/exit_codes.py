"""The exit codes of fedtree's entry points (`python -m worker`, `python -m coordinator`, `fedtree admin`).

The numbers are part of the interface: scripts, compose files and the tests check them.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    # Anything unexpected: a crash, or (admin CLI) a call the coordinator answered with an error.
    ERROR = 1
    # A bad config file, argument, environment override or state directory: fix it and rerun.
    CONFIG = 2
    # Worker: the coordinator refused it (its data, model or schema does not fit the run, or it was evicted).
    REJECTED = 3
    # Worker: the coordinator stayed unreachable for connect_timeout_s.
    UNREACHABLE = 4
    # Coordinator: stopped by SIGINT or SIGTERM before the run was complete (128 + SIGINT).
    SIGNAL = 130
