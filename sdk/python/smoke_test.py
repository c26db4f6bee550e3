"""Smoke test of the Python SDK against a real control plane and agent.

    TETHER_GRPC=127.0.0.1:50051 TETHER_TOKEN=... python sdk/python/smoke_test.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tether_sdk import connect  # noqa: E402


def main() -> None:
    t = connect(os.environ["TETHER_GRPC"], os.environ["TETHER_TOKEN"])
    nodes = t.nodes.ListNodes(t.pb.node.ListNodesRequest()).nodes
    assert nodes, "at least one node"
    assert any(n.status == t.pb.node.NODE_STATUS_READY for n in nodes), nodes
    job = t.submit("/bin/sh", "-c", "echo hello from python $TETHER_JOB_ID", max_attempts=1)
    assert job.status == t.pb.job.JOB_STATUS_PENDING, job
    done = t.wait(job.job_id)
    assert done.status == t.pb.job.JOB_STATUS_SUCCEEDED, done
    out = b"".join(t.logs(job.job_id)).decode()
    assert out == f"hello from python {job.job_id}\n", repr(out)
    t.close()
    print(f"python sdk ok: {len(nodes)} node(s), job {job.job_id} succeeded, logs {out.strip()!r}")


if __name__ == "__main__":
    main()
