"""A protoc plugin that runs grpcio-tools' gRPC Python generator.

grpcio-tools ships the generator inside its bundled protoc, not as a
`protoc-gen-grpc_python` executable; this adapter lets buf call it as a local
plugin: it takes buf's CodeGeneratorRequest, hands the descriptors to the
bundled protoc, and returns what it wrote.
"""

import os
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> None:
    req = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    resp = plugin_pb2.CodeGeneratorResponse()
    resp.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    with tempfile.TemporaryDirectory() as tmp:
        fds = descriptor_pb2.FileDescriptorSet(file=req.proto_file)
        set_path = os.path.join(tmp, "set.pb")
        with open(set_path, "wb") as f:
            f.write(fds.SerializeToString())
        out = os.path.join(tmp, "out")
        os.mkdir(out)
        opt = f"{req.parameter}:" if req.parameter else ""
        rc = protoc.main(["protoc", f"--descriptor_set_in={set_path}", f"--grpc_python_out={opt}{out}", *req.file_to_generate])
        if rc != 0:
            resp.error = f"grpc_tools.protoc exited with {rc}"
        else:
            for root, _, files in os.walk(out):
                for name in sorted(files):
                    full = os.path.join(root, name)
                    with open(full, encoding="utf-8") as f:
                        resp.file.add(name=os.path.relpath(full, out), content=f.read())
    sys.stdout.buffer.write(resp.SerializeToString())


if __name__ == "__main__":
    main()
