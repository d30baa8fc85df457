"""The ceiling of bench/transfer.py: a minimal raw grpcio stream of the same bytes.

No protobuf, no framing, no hashing, no tensors: the server holds the payload as pre-cut 1 MiB
`bytes` chunks and streams them down (server stream); the client keeps what it received and
streams it straight back up (client stream). Serializers are the identity, so the only costs
left are gRPC's own (HTTP/2 framing, flow control, copies into and out of the core).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from multiprocessing.synchronize import Barrier
from typing import Any

import grpc

from common.grpc_options import CHANNEL_OPTIONS, SERVER_OPTIONS

SERVICE = "fedtree.bench.Raw"
CHUNK = 1 << 20


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _identity(data: bytes) -> bytes:
    return data


class RawServer:
    """Serves Pull (stream of the payload's chunks) and Push (counts the bytes it receives)."""

    def __init__(self, payload_bytes: int) -> None:
        blob = bytes(payload_bytes)
        self.chunks = [blob[i : i + CHUNK] for i in range(0, payload_bytes, CHUNK)]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=SERVER_OPTIONS)
        handlers = {
            "Pull": grpc.unary_stream_rpc_method_handler(self._pull, _identity, _identity),
            "Push": grpc.stream_unary_rpc_method_handler(self._push, _identity, _identity),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.received = 0
        self._lock = threading.Lock()

    def _pull(self, request: bytes, context: Any) -> Iterator[bytes]:
        yield from self.chunks

    def _push(self, requests: Iterator[bytes], context: Any) -> bytes:
        n = sum(len(r) for r in requests)
        with self._lock:
            self.received += n
        return n.to_bytes(8, "little")


def serve(payload_bytes: int, port_queue: Any, stop: Any) -> None:
    """Process entry point: serve until `stop` is set."""
    server = RawServer(payload_bytes)
    server.server.start()
    port_queue.put((server.port, os.getpid()))
    stop.wait()
    server.server.stop(0)


def client(target: str, server_pid: int, payload_bytes: int, repeats: int, barrier: Barrier, results: Any) -> None:
    """Process entry point: `repeats` x (pull the payload, push it back), each after a barrier."""
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    pull = channel.unary_stream(f"/{SERVICE}/Pull", request_serializer=_identity, response_deserializer=_identity)
    push = channel.stream_unary(f"/{SERVICE}/Push", request_serializer=_identity, response_deserializer=_identity)
    grpc.channel_ready_future(channel).result(timeout=30)
    for i in range(repeats):
        barrier.wait()
        start, cpu, server_cpu = time.perf_counter(), time.process_time(), proc_cpu(server_pid)
        chunks = list(pull(b""))
        got = sum(len(c) for c in chunks)
        acked = int.from_bytes(push(iter(chunks)), "little")
        end, cpu, server_cpu = time.perf_counter(), time.process_time() - cpu, (server_cpu, proc_cpu(server_pid))
        results.put((i, start, end, got == payload_bytes and acked == payload_bytes, cpu, *server_cpu))
    channel.close()
