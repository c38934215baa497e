"""The edge's decisions as gRPC statuses: one place that says which refusal is which code.

Pure functions over the core's errors, so every method of the service (and any later binding of
a ``.proto`` of the user's own) refuses the same way. ``INVALID_ARGUMENT`` carries the standard
rich error model (``grpc-status-details-bin``: ``google.rpc.Status`` with a
``google.rpc.BadRequest`` whose field violations are the payload's JSON pointers), which every
gRPC language's status library decodes; the plain message says the same in words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from bridge.edge.access import Denial
from bridge.edge.guard import AuthError
from bridge.edge.validation import Violation


@dataclass(frozen=True, slots=True)
class Refusal(Exception):
    """A call refused at the edge, before anything reached Kafka (or, for UNAVAILABLE, because
    Kafka did not take it). ``kind`` is the metrics label, as the other front-ends count it."""

    code: grpc.StatusCode
    kind: str
    detail: str
    violations: Sequence[Violation] = field(default_factory=tuple)
    retry_s: float = 0.0  # > 0: a google.rpc.RetryInfo detail says when to try again

    def __str__(self) -> str:
        return f"{self.code.name} {self.kind}: {self.detail}"

    def status(self) -> grpc.Status:
        """The status with its details, for ``context.abort_with_status``."""
        proto = status_pb2.Status(code=self.code.value[0], message=self.detail)
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.pointer or "/", description=v.message
                    )
                    for v in self.violations
                ]
            )
            detail = any_pb2.Any()
            detail.Pack(bad)
            proto.details.append(detail)
        if self.retry_s > 0:
            retry = error_details_pb2.RetryInfo()
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_s * 1e9))
            retry.retry_delay.CopyFrom(delay)
            detail = any_pb2.Any()
            detail.Pack(retry)
            proto.details.append(detail)
        return rpc_status.to_status(proto)


def unauthenticated(error: AuthError) -> Refusal:
    return Refusal(
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid-token",
        f"token refused ({error.reason}): {error.detail}",
    )


def denied(denial: Denial) -> Refusal:
    if denial.unauthenticated:
        return Refusal(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", denial.reason)
    return Refusal(grpc.StatusCode.PERMISSION_DENIED, "forbidden", denial.reason)


def invalid(kind: str, detail: str, violations: Sequence[Violation] = ()) -> Refusal:
    return Refusal(grpc.StatusCode.INVALID_ARGUMENT, kind, detail, tuple(violations))


def unavailable(detail: str) -> Refusal:
    return Refusal(grpc.StatusCode.UNAVAILABLE, "kafka-unavailable", detail)


def retry_delay_of(error: grpc.aio.AioRpcError | grpc.RpcError) -> float | None:
    """The RetryInfo delay of a refusal, in seconds (None without one)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        retry = error_details_pb2.RetryInfo()
        if detail.Is(retry.DESCRIPTOR) and detail.Unpack(retry):
            return retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return None


def violations_of(error: grpc.aio.AioRpcError | grpc.RpcError) -> list[tuple[str, str]]:
    """(pointer, description) pairs of an INVALID_ARGUMENT's BadRequest details: for clients
    and tests, the reverse of :meth:`Refusal.status`."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    found: list[tuple[str, str]] = []
    if status is None:
        return found
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Is(bad.DESCRIPTOR) and detail.Unpack(bad):
            found.extend((v.field, v.description) for v in bad.field_violations)
    return found


assert code_pb2.INVALID_ARGUMENT == grpc.StatusCode.INVALID_ARGUMENT.value[0]
