"""Every gRPC channel and server option fedtree uses, in one place, each with its reason."""

from __future__ import annotations

# Chunks are 1 MiB by default; a message never holds a whole model, so the default 4 MiB receive
# limit stays as the guard against oversize messages. We allow a little headroom above it so a
# user may configure chunks up to 4 MiB without touching this file.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

# Workers train for minutes between calls; keepalive pings keep NATs and proxies from dropping
# the idle connection, and let either side notice a dead peer within ~40 s.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # No retryPolicy service config: the worker's one retry layer is its client loop, with the
    # policy and the reasons in common/retry.py. What stays on is gRPC's transparent retry of a
    # call that never left this process (the connection broke before it was written): it cannot
    # run twice on the coordinator and is not a policy.
    ("grpc.enable_retries", 1),
]

SERVER_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    # Accept client pings as often as every 10 s even without active calls (long training).
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    # No BDP probing on the server: it grows each upload stream's receive window, so pushes waiting
    # for a slot (coordinator/limits.py) would each buffer megabytes in the transport -- 100 workers
    # x 16 MB adapters peaked at 2.3 GB instead of 1.2 GB. Loopback push throughput is unchanged.
    ("grpc.http2.bdp_probe", 0),
]
