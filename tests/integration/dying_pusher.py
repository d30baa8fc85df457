"""A worker process that dies (SIGKILL, by its own hand) in the middle of a push.

    python dying_pusher.py PORT WORKER_ID VALUE CHUNKS

Joins, takes its round-1 task, then streams the push header and its first CHUNKS chunks (every
tensor filled with VALUE, 1 KiB chunks), waits for them to leave, and SIGKILLs itself.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc  # noqa: E402
from test_kill_mid_upload import update  # noqa: E402

from common import codec, serde  # noqa: E402
from common.chunking import BlobKey, Role, split  # noqa: E402
from common.grpc_options import CHANNEL_OPTIONS  # noqa: E402
from common.schema import schema_of  # noqa: E402
from common.types import JoinRequest, PushHeader  # noqa: E402
from proto.fedtree.v1 import federation_pb2 as pb  # noqa: E402
from proto.fedtree.v1 import federation_pb2_grpc as pb_grpc  # noqa: E402


def main() -> None:
    port, worker, value, n_chunks = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    stub = pb_grpc.FederationStub(grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS))
    tensors = update(value)
    stub.Join(serde.join_to_proto(JoinRequest(worker, "fingerprint-1", 10, schema_of(tensors))), timeout=10)
    task = stub.GetTask(pb.GetTaskRequest(worker_id=worker, wait_seconds=5), timeout=20)
    assert task.kind == pb.TASK_KIND_TRAIN, task

    def requests() -> Iterator[pb.PushUpdateRequest]:
        yield serde.push_header_to_proto(PushHeader(worker, task.round, "doomed-upload", 10, {}))
        sent = 0
        for layer, layer_tensors in sorted(tensors.items()):
            for chunk in split(codec.encode(layer_tensors), BlobKey(task.round, layer, Role.UPDATE), 1024):
                yield pb.PushUpdateRequest(chunk=serde.chunk_to_proto(chunk))
                sent += 1
                if sent == n_chunks:
                    print(f"sent {sent} chunks, dying", flush=True)
                    time.sleep(1.0)  # let them reach the coordinator
                    os.kill(os.getpid(), signal.SIGKILL)

    stub.PushUpdate(requests(), timeout=30)
    raise SystemExit("the push finished: CHUNKS was larger than the update")


if __name__ == "__main__":
    main()
