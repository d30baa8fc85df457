"""grpc.health.v1.Health with every method the reflection service advertises.

grpcio-health-checking's HealthServicer implements Check and Watch, but its generated base answers
List with UNIMPLEMENTED although health.proto (and so our reflection) lists it. `List` here returns
the same statuses `Check` reads, one snapshot under the servicer's lock.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2


class HealthServicer(health.HealthServicer):
    def List(self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext) -> health_pb2.HealthListResponse:
        with self._lock:
            statuses = {name: health_pb2.HealthCheckResponse(status=status) for name, status in self._server_status.items()}
        return health_pb2.HealthListResponse(statuses=statuses)
