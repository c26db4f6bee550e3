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
    /// A sealed secret as an environment variable: NAME[:VERSION]=VAR.
    #[arg(long = "secret-env", value_parser = parse_secret)]
    pub(crate) secret_env: Vec<(String, u32, String)>,
    /// A sealed secret as a file in $TETHER_SECRETS_DIR: NAME[:VERSION]=FILE.
    #[arg(long = "secret-file", value_parser = parse_secret)]
    pub(crate) secret_file: Vec<(String, u32, String)>,
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
            secrets: self
                .secret_env
                .iter()
                .map(|(name, version, env)| pb::SecretRef {
                    name: name.clone(),
                    version: *version,
                    env: env.clone(),
                    file: String::new(),
                })
                .chain(self.secret_file.iter().map(|(name, version, file)| pb::SecretRef {
                    name: name.clone(),
                    version: *version,
                    env: String::new(),
                    file: file.clone(),
                }))
                .collect(),
        }
    }
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} must be KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// `NAME[:VERSION]=WHERE` (version 0, the latest, when left out).
pub(crate) fn parse_secret(s: &str) -> Result<(String, u32, String), String> {
    let (secret, to) = s.split_once('=').ok_or_else(|| format!("{s:?} must be NAME[:VERSION]=TARGET"))?;
    let (name, version) = parse_versioned(secret)?;
    Ok((name, version, to.to_owned()))
}

/// `NAME` (version 0: the latest) or `NAME:VERSION`.
pub(crate) fn parse_versioned(s: &str) -> Result<(String, u32), String> {
    match s.split_once(':') {
        Some((n, v)) => Ok((n.to_owned(), v.parse().map_err(|_| format!("{v:?} is not a version number"))?)),
        None => Ok((s.to_owned(), 0)),
    }
}
