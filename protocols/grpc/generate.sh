#!/bin/sh
# Regenerate the message classes of edgebridge.proto (committed, so the bridge needs no protoc
# at start-up). Run from the repository root: protocols/grpc/generate.sh
set -e
.venv/bin/python -m grpc_tools.protoc -Iprotocols/grpc --python_out=protocols/grpc \
    --pyi_out=protocols/grpc protocols/grpc/edgebridge.proto
