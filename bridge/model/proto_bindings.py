"""``.proto`` bindings of gRPC routes: a service of the user's own, compiled when routing.toml
loads, so ``edgebridge check`` reports a bad file or method at its line.

``[routes.grpc] proto = "odds.proto"`` and ``produce = "/odds.v1.Odds/Publish"`` bind a unary
method of that file to the route: the gRPC front-end serves it, turning each request message
into the route's JSON (protobuf's canonical JSON mapping with the ``.proto``'s field names) before
the same validation as any other payload. The file is compiled with ``grpcio-tools``' protoc in a
subprocess (its errors, ``file:line:column: message``, are what the user sees) into a descriptor
set, loaded into a pool of its own: no generated code, nothing written next to the file.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool

PROTOC_TIMEOUT_S = 60.0


class ProtoBindingError(ValueError):
    """A ``.proto`` that does not compile, or a method it does not have (or of the wrong kind)."""


@dataclass(frozen=True, slots=True)
class MethodBinding:
    """One method of a compiled ``.proto`` bound to a route."""

    path: str  # "/package.Service/Method", as on the wire
    service: str  # "package.Service"
    method: str  # "Method"
    input_type: str  # full name of the request message
    output_type: str  # full name of the response message
    pool: descriptor_pool.DescriptorPool


@lru_cache(maxsize=32)
def compile_proto(path: Path) -> tuple[descriptor_pool.DescriptorPool, bytes]:
    """The descriptor pool of ``path`` (and its imports, the well-known types included)."""
    import grpc_tools  # the protoc of grpcio-tools and its well-known .proto files

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    if not path.is_file():
        raise ProtoBindingError(f"cannot read {path}")
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "set.pb"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{path.parent}",
                f"-I{well_known}",
                "--include_imports",
                f"--descriptor_set_out={out}",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=PROTOC_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0 or not out.exists():
            detail = result.stderr.strip() or result.stdout.strip() or "protoc failed"
            raise ProtoBindingError(detail.replace(str(path.parent) + "/", ""))
        data = out.read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool, data


def bind_method(proto: Path, path: str, streaming: bool) -> MethodBinding:
    """The method ``/package.Service/Method`` of ``proto``; ``streaming``: server-streaming
    (Subscribe-like) rather than unary."""
    pool, data = compile_proto(proto)
    service_name, _, method_name = path.lstrip("/").partition("/")
    if not path.startswith("/") or not service_name or not method_name:
        raise ProtoBindingError(f"{path!r}: expected /package.Service/Method")
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        known = sorted(
            f"{f.package + '.' if f.package else ''}{s.name}"
            for f in descriptor_pb2.FileDescriptorSet.FromString(data).file
            for s in f.service
        )
        raise ProtoBindingError(
            f"{proto.name} has no service {service_name}"
            + (f" (it has: {', '.join(known)})" if known else " (it declares no service)")
        ) from None
    method = service.methods_by_name.get(method_name)
    if method is None:
        raise ProtoBindingError(
            f"service {service_name} has no method {method_name} "
            f"(it has: {', '.join(sorted(service.methods_by_name))})"
        )
    shape = method_shape(data, service_name, method_name)
    wanted = (False, streaming)
    if shape != wanted:
        kinds = {
            (False, False): "unary",
            (False, True): "server-streaming",
            (True, False): "client-streaming",
            (True, True): "bidirectional",
        }
        raise ProtoBindingError(
            f"{path} is {kinds[shape]}; this binding needs a {kinds[wanted]} method"
        )
    return MethodBinding(
        path=f"/{service_name}/{method_name}",
        service=service_name,
        method=method_name,
        input_type=method.input_type.full_name,
        output_type=method.output_type.full_name,
        pool=pool,
    )


def method_shape(data: bytes, service: str, method: str) -> tuple[bool, bool]:
    """(client_streaming, server_streaming) of a method, from the descriptor set itself."""
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        prefix = f"{file.package}." if file.package else ""
        for declared in file.service:
            if prefix + declared.name != service:
                continue
            for m in declared.method:
                if m.name == method:
                    return m.client_streaming, m.server_streaming
    return False, False
