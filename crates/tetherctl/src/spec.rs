//! Arguments several commands share: where work may run, what it runs.

use std::time::Duration;

use clap::Args;
use tether_proto::pb;

#[derive(Args)]
pub(crate) struct Placement {
    /// CPU in millicores.
    #[arg(long, default_value_t = 0)]
    pub(crate) cpu: i64,
    /// Memory in MB.
    #[arg(long, default_value_t = 0)]
    pub(crate) memory: i64,
    #[arg(long, default_value_t = 0)]
    pub(crate) gpus: i64,
    #[arg(long, default_value = "")]
    pub(crate) pool: String,
    /// Label selector the node must match.
    #[arg(short = 'l', long, default_value = "")]
    pub(crate) selector: String,
    #[arg(long, default_value = "")]
    pub(crate) gpu_model: String,
}

impl Placement {
    pub(crate) fn resources(&self) -> pb::Resources {
        pb::Resources { cpu_millis: self.cpu, memory_mb: self.memory, gpus: self.gpus }
    }
    pub(crate) fn constraints(&self) -> pb::Constraints {
        pb::Constraints {
            pool: self.pool.clone(),
            label_selector: self.selector.clone(),
            gpu_model: self.gpu_model.clone(),
        }
    }
}

#[derive(Args)]
pub(crate) struct Exec {
    /// Environment variables, KEY=VALUE.
    #[arg(short, long = "env", value_parser = parse_kv)]
    pub(crate) env: Vec<(String, String)>,
    #[arg(long, default_value = "")]
    pub(crate) workdir: String,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) command: Vec<String>,
}

impl Exec {
    pub(crate) fn spec(&self, timeout: Option<Duration>) -> pb::ExecSpec {
        pb::ExecSpec {
            command: self.command[0].clone(),
            args: self.command[1..].to_vec(),
            env: self.env.iter().cloned().collect(),
            working_dir: self.workdir.clone(),
            timeout: timeout.map(tether_types::duration_to_pb),
        }
    }
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} must be KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}
