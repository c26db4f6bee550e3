// A small convenience layer over the generated Connect-ES clients: one
// authenticated gRPC transport (HTTP/2, talking straight to the control
// plane's gRPC port) and a client per operator service.
//
//   const t = connect("http://127.0.0.1:50051", token);
//   const { nodes } = await t.nodes.listNodes({});

import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { NodeService } from "./gen/tether/v1/node_pb.js";
import { JobService, JobStatus, type Job } from "./gen/tether/v1/job_pb.js";
import { WorkloadService } from "./gen/tether/v1/workload_pb.js";
import { TenancyService } from "./gen/tether/v1/tenancy_pb.js";
import { PlacementService } from "./gen/tether/v1/placement_pb.js";

export * as node from "./gen/tether/v1/node_pb.js";
export * as job from "./gen/tether/v1/job_pb.js";
export * as workload from "./gen/tether/v1/workload_pb.js";
export * as tenancy from "./gen/tether/v1/tenancy_pb.js";
export * as placement from "./gen/tether/v1/placement_pb.js";

export const TERMINAL_JOB_STATUSES: ReadonlySet<JobStatus> = new Set([
  JobStatus.SUCCEEDED,
  JobStatus.FAILED,
  JobStatus.CANCELLED,
  JobStatus.LOST,
]);

export interface Tether {
  nodes: Client<typeof NodeService>;
  jobs: Client<typeof JobService>;
  workloads: Client<typeof WorkloadService>;
  tenancy: Client<typeof TenancyService>;
  placement: Client<typeof PlacementService>;
  /** Follows WatchJob until the job is terminal, then returns it with its attempts. */
  wait(jobId: string): Promise<Job>;
  /** The job's output of its current attempt. */
  logs(jobId: string): Promise<string>;
}

export function connect(baseUrl: string, token: string): Tether {
  const auth: Interceptor = (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token.trim()}`);
    return next(req);
  };
  const transport = createGrpcTransport({ baseUrl, interceptors: [auth] });
  const jobs = createClient(JobService, transport);
  return {
    nodes: createClient(NodeService, transport),
    jobs,
    workloads: createClient(WorkloadService, transport),
    tenancy: createClient(TenancyService, transport),
    placement: createClient(PlacementService, transport),
    async wait(jobId: string): Promise<Job> {
      for await (const ev of jobs.watchJob({ jobId })) {
        if (ev.job && TERMINAL_JOB_STATUSES.has(ev.job.status)) {
          break;
        }
      }
      const { job } = await jobs.getJob({ jobId });
      if (!job) throw new Error(`job ${jobId} vanished`);
      return job;
    },
    async logs(jobId: string): Promise<string> {
      const parts: Uint8Array[] = [];
      for await (const chunk of jobs.streamJobLogs({ jobId })) {
        parts.push(chunk.data);
      }
      return Buffer.concat(parts).toString("utf8");
    },
  };
}
