// Smoke test of the TypeScript SDK against a real control plane and agent:
//   TETHER_URL=http://127.0.0.1:50051 TETHER_TOKEN=... npm run smoke

import assert from "node:assert/strict";
import { connect, node, job } from "./index.js";

async function main(): Promise<void> {
  const t = connect(process.env.TETHER_URL ?? "http://127.0.0.1:50051", process.env.TETHER_TOKEN ?? "");
  const { nodes } = await t.nodes.listNodes({});
  assert.ok(nodes.length > 0, "at least one node");
  assert.ok(nodes.some((n) => n.status === node.NodeStatus.READY), "a ready node");
  const submitted = await t.jobs.submitJob({
    spec: { driver: "exec", exec: { command: "/bin/sh", args: ["-c", "echo hello from typescript $TETHER_JOB_ID"] } },
  });
  const id = submitted.job?.jobId ?? "";
  assert.match(id, /^job-/);
  const done = await t.wait(id);
  assert.equal(done.status, job.JobStatus.SUCCEEDED);
  assert.equal(done.attempts.length, 1);
  const out = await t.logs(id);
  assert.equal(out, `hello from typescript ${id}\n`);
  console.log(`typescript sdk ok: ${nodes.length} node(s), job ${id} succeeded, logs ${JSON.stringify(out.trim())}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
