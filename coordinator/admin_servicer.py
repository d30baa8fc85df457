"""Thin gRPC servicer of fedtree.v1.Admin over coordinator.admin.AdminView (encoded by common.serde)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from common import serde
from coordinator.admin import AdminView
from coordinator.servicer import rpc
from proto.fedtree.v1 import admin_pb2 as apb
from proto.fedtree.v1 import admin_pb2_grpc as apb_grpc


class AdminServicer(apb_grpc.AdminServicer):
    def __init__(self, view: AdminView) -> None:
        self.view = view

    @rpc
    def GetTree(self, request: apb.GetTreeRequest, context: grpc.ServicerContext) -> apb.GetTreeResponse:
        return serde.tree_to_proto(self.view.tree())

    @rpc
    def ListWorkers(self, request: apb.ListWorkersRequest, context: grpc.ServicerContext) -> apb.ListWorkersResponse:
        return serde.workers_to_proto(self.view.workers())

    @rpc
    def GetStatus(self, request: apb.GetStatusRequest, context: grpc.ServicerContext) -> apb.GetStatusResponse:
        return serde.status_to_proto(self.view.status())

    @rpc
    def GetRounds(self, request: apb.GetRoundsRequest, context: grpc.ServicerContext) -> apb.GetRoundsResponse:
        return serde.rounds_to_proto(self.view.rounds())

    @rpc
    def ExportAdapter(self, request: apb.ExportAdapterRequest, context: grpc.ServicerContext) -> Iterator[apb.FileChunk]:
        for piece in self.view.export(request.worker_id):
            yield serde.file_piece_to_proto(piece)

    @rpc
    def EvictWorker(self, request: apb.EvictWorkerRequest, context: grpc.ServicerContext) -> apb.EvictWorkerResponse:
        self.view.evict(request.worker_id)
        return apb.EvictWorkerResponse()

    @rpc
    def Pause(self, request: apb.PauseRequest, context: grpc.ServicerContext) -> apb.PauseResponse:
        self.view.pause(True)
        return apb.PauseResponse()

    @rpc
    def Resume(self, request: apb.ResumeRequest, context: grpc.ServicerContext) -> apb.ResumeResponse:
        self.view.pause(False)
        return apb.ResumeResponse()

    @rpc
    def RebuildTree(self, request: apb.RebuildTreeRequest, context: grpc.ServicerContext) -> apb.RebuildTreeResponse:
        return apb.RebuildTreeResponse(round=self.view.rebuild())
