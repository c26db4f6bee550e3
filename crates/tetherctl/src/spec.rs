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
    /// A sealed secret for the process: NAME[:VERSION]=env:VAR (an
    /// environment variable) or NAME[:VERSION]=file:FILE (a 0400 file in
    /// $TETHER_SECRETS_DIR). The latest version without :VERSION.
    #[arg(long = "secret", value_parser = parse_secret)]
    pub(crate) secrets: Vec<pb::SecretRef>,
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
            secrets: self.secrets.clone(),
        }
    }
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} must be KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// `NAME[:VERSION]=env:VAR` or `NAME[:VERSION]=file:FILE` (version 0,
/// the latest, when left out).
pub(crate) fn parse_secret(s: &str) -> Result<pb::SecretRef, String> {
    let usage = || format!("{s:?} must be NAME[:VERSION]=env:VAR or NAME[:VERSION]=file:FILE");
    let (secret, to) = s.split_once('=').ok_or_else(usage)?;
    let (name, version) = parse_versioned(secret)?;
    let (env, file) = match to.split_once(':') {
        Some(("env", v)) => (v.to_owned(), String::new()),
        Some(("file", f)) => (String::new(), f.to_owned()),
        _ => return Err(usage()),
    };
    Ok(pb::SecretRef { name, version, env, file })
}

/// `NAME` (version 0: the latest) or `NAME:VERSION`.
pub(crate) fn parse_versioned(s: &str) -> Result<(String, u32), String> {
    match s.split_once(':') {
        Some((n, v)) => Ok((n.to_owned(), v.parse().map_err(|_| format!("{v:?} is not a version number"))?)),
        None => Ok((s.to_owned(), 0)),
    }
}
