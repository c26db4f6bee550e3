//! `tetherctl workloads`.

use clap::{Subcommand, ValueEnum};
use tether_proto::pb;

use crate::Clients;
use crate::output::Out;
use crate::spec::{Exec, Placement};

#[derive(Subcommand)]
pub(crate) enum WorkloadsCmd {
    /// Create a workload: `tetherctl workloads create web --replicas 3 -- /usr/bin/server`.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        #[arg(long, default_value_t = 1)]
        max_parallel: u32,
        #[arg(long, value_enum, default_value_t = RestartArg::Always)]
        restart: RestartArg,
        #[command(flatten)]
        placement: Placement,
        #[command(flatten)]
        exec: Exec,
    },
    Get {
        workload_id: String,
    },
    List,
    Scale {
        workload_id: String,
        replicas: u32,
    },
    Delete {
        workload_id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum RestartArg {
    Always,
    OnFailure,
    Never,
}

pub(crate) async fn run(c: &Clients, out: &Out, cmd: WorkloadsCmd) -> anyhow::Result<i32> {
    match cmd {
        WorkloadsCmd::Create { name, replicas, max_parallel, restart, placement, exec } => {
            let spec = pb::WorkloadSpec {
                driver: "exec".into(),
                exec: Some(exec.spec(None)),
                resources: Some(placement.resources()),
                constraints: Some(placement.constraints()),
                restart_policy: match restart {
                    RestartArg::Always => pb::RestartPolicy::Always,
                    RestartArg::OnFailure => pb::RestartPolicy::OnFailure,
                    RestartArg::Never => pb::RestartPolicy::Never,
                } as i32,
                max_parallel,
            };
            let r = c
                .workloads()
                .create_workload(pb::CreateWorkloadRequest { name, spec: Some(spec), replicas })
                .await?
                .into_inner();
            out.workload(r.workload.as_ref().expect("a workload"));
        }
        WorkloadsCmd::Get { workload_id } => {
            let r = c.workloads().get_workload(pb::GetWorkloadRequest { workload_id }).await?.into_inner();
            out.workload(r.workload.as_ref().expect("a workload"));
        }
        WorkloadsCmd::List => {
            let r = c.workloads().list_workloads(pb::ListWorkloadsRequest {}).await?.into_inner();
            out.workloads(&r);
        }
        WorkloadsCmd::Scale { workload_id, replicas } => {
            let r =
                c.workloads().scale_workload(pb::ScaleWorkloadRequest { workload_id, replicas }).await?.into_inner();
            out.workload(r.workload.as_ref().expect("a workload"));
        }
        WorkloadsCmd::Delete { workload_id } => {
            let r = c.workloads().delete_workload(pb::DeleteWorkloadRequest { workload_id }).await?.into_inner();
            out.workload(r.workload.as_ref().expect("a workload"));
        }
    }
    Ok(0)
}
