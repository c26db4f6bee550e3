#!/bin/sh
# protoc as bundled in grpcio-tools (from the repo's .venv), for buf's
# protoc_builtin plugins.
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../../.venv/bin/python" -m grpc_tools.protoc "$@"
