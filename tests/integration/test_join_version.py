"""Over the wire: a Join of another protocol MAJOR is FAILED_PRECONDITION with a clear message."""

from __future__ import annotations

import grpc
import pytest
import torch

from common import serde
from common.grpc_options import CHANNEL_OPTIONS
from common.schema import schema_of
from common.types import JoinRequest
from proto.fedtree.v1 import federation_pb2_grpc as pb_grpc

SCHEMA = schema_of({0: {"q.lora_A.weight": torch.zeros(2, 8), "q.lora_B.weight": torch.zeros(8, 2)}})


def test_join_of_another_major_version_is_refused(coordinator_factory) -> None:  # type: ignore[no-untyped-def]
    coord = coordinator_factory(strategy="fedit", rounds=1, min_workers=1)
    with grpc.insecure_channel(f"127.0.0.1:{coord.port}", options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.FederationStub(channel)
        for version, words in (("2.0", "major versions differ"), ("", "no usable protocol version")):
            with pytest.raises(grpc.RpcError) as info:
                stub.Join(serde.join_to_proto(JoinRequest("w", "fp", 5, SCHEMA, version=version)), timeout=10)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and words in info.value.details()
        assert coord.engine.workers == {} and coord.engine.schema is None
        reply = stub.Join(serde.join_to_proto(JoinRequest("w", "fp", 5, SCHEMA, version="1.3")), timeout=10)
        assert reply.current_round == 1 and set(coord.engine.workers) == {"w"}
