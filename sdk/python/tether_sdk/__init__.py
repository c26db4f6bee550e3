"""A small convenience layer over the generated Tether gRPC stubs.

    from tether_sdk import connect
    t = connect("127.0.0.1:50051", token)
    nodes = t.nodes.ListNodes(t.pb.node.ListNodesRequest()).nodes

Every call carries `authorization: Bearer <token>`. The generated modules are
under `tether.v1` (regenerate with `scripts/generate-sdk`).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Iterator

import grpc

from tether.v1 import job_pb2, job_pb2_grpc
from tether.v1 import node_pb2, node_pb2_grpc
from tether.v1 import placement_pb2, placement_pb2_grpc
from tether.v1 import tenancy_pb2, tenancy_pb2_grpc
from tether.v1 import workload_pb2, workload_pb2_grpc

__all__ = ["Client", "connect", "TERMINAL_JOB_STATUSES"]

TERMINAL_JOB_STATUSES = frozenset(
    {
        job_pb2.JOB_STATUS_SUCCEEDED,
        job_pb2.JOB_STATUS_FAILED,
        job_pb2.JOB_STATUS_CANCELLED,
        job_pb2.JOB_STATUS_LOST,
    }
)


def _channel(target: str, token: str) -> grpc.Channel:
    # Plaintext HTTP/2 with a per-call credential: grpc only attaches call
    # credentials on secure channels, so add the header with an interceptor.
    channel = grpc.insecure_channel(target)
    return grpc.intercept_channel(channel, _HeaderInterceptor(("authorization", f"Bearer {token.strip()}")))


class _HeaderInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    def _details(self, details):
        md = list(details.metadata or []) + [self._header]
        return _Details(details.method, details.timeout, md, details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)


@dataclass
class _Details(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: list
    credentials: object
    wait_for_ready: bool | None
    compression: object


class Client:
    """Stubs for every operator service, sharing one authenticated channel."""

    pb = types.SimpleNamespace(node=node_pb2, job=job_pb2, workload=workload_pb2, tenancy=tenancy_pb2, placement=placement_pb2)

    def __init__(self, target: str, token: str) -> None:
        self.channel = _channel(target, token)
        self.nodes = node_pb2_grpc.NodeServiceStub(self.channel)
        self.jobs = job_pb2_grpc.JobServiceStub(self.channel)
        self.workloads = workload_pb2_grpc.WorkloadServiceStub(self.channel)
        self.tenancy = tenancy_pb2_grpc.TenancyServiceStub(self.channel)
        self.placement = placement_pb2_grpc.PlacementServiceStub(self.channel)

    def submit(self, command: str, *args: str, **spec) -> job_pb2.Job:
        """Submits an exec job; keyword arguments go to JobSpec (e.g. max_attempts=3)."""
        req = job_pb2.SubmitJobRequest(
            spec=job_pb2.JobSpec(driver="exec", exec=job_pb2.ExecSpec(command=command, args=list(args)), **spec)
        )
        return self.jobs.SubmitJob(req).job

    def wait(self, job_id: str, timeout: float = 60.0) -> job_pb2.Job:
        """Follows WatchJob until the job is terminal; returns its final state."""
        last = None
        for ev in self.jobs.WatchJob(job_pb2.WatchJobRequest(job_id=job_id), timeout=timeout):
            last = ev.job
            if last.status in TERMINAL_JOB_STATUSES:
                break
        if last is None or last.status not in TERMINAL_JOB_STATUSES:
            raise TimeoutError(f"job {job_id} did not finish within {timeout}s")
        return self.jobs.GetJob(job_pb2.GetJobRequest(job_id=job_id)).job

    def logs(self, job_id: str, follow: bool = False) -> Iterator[bytes]:
        for chunk in self.jobs.StreamJobLogs(job_pb2.StreamJobLogsRequest(job_id=job_id, follow=follow)):
            yield chunk.data

    def close(self) -> None:
        self.channel.close()


def connect(target: str, token: str) -> Client:
    """`target` is host:port of the gRPC API, e.g. "127.0.0.1:50051"."""
    return Client(target, token)
