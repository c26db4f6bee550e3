//! `tetherctl secrets`: sealed secrets. `put` seals the value here, to each
//! recipient node's key, so that the plaintext never reaches the control
//! plane (`--server-side` sends it to be sealed there instead).

use std::io::Read;

use clap::Subcommand;
use tether_auth::seal::{self, CopyLabel};
use tether_proto::pb;
use zeroize::Zeroizing;

use crate::Clients;
use crate::output::Out;
use crate::spec::parse_versioned;

#[derive(Subcommand)]
pub(crate) enum SecretsCmd {
    /// Store a new version. The value comes from --value, --from-file or
    /// standard input.
    Put {
        name: String,
        #[arg(long, conflicts_with = "from_file")]
        value: Option<String>,
        #[arg(long)]
        from_file: Option<std::path::PathBuf>,
        /// Send the plaintext for the control plane to seal (and forget).
        #[arg(long)]
        server_side: bool,
    },
    /// The project's secrets and their versions.
    List,
    /// One version's metadata: who stored it, which nodes hold a copy.
    Get {
        /// NAME (the latest version) or NAME:VERSION.
        #[arg(value_parser = parse_versioned)]
        secret: (String, u32),
    },
    /// Delete one version (NAME:VERSION), or all (NAME).
    Delete {
        #[arg(value_parser = parse_versioned)]
        secret: (String, u32),
    },
    /// The nodes a secret is sealed to, with their keys.
    Recipients,
}

fn read_value(value: Option<String>, from_file: Option<std::path::PathBuf>) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    Ok(Zeroizing::new(match (value, from_file) {
        (Some(v), _) => v.into_bytes(),
        (None, Some(f)) => std::fs::read(&f).map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?,
        (None, None) => {
            let mut b = Vec::new();
            std::io::stdin().read_to_end(&mut b)?;
            b
        }
    }))
}

/// Seals `value` for every recipient of the project, for the version a put
/// of `name` stores next; `None` when the control plane has no recipient.
async fn sealed_put(c: &Clients, name: &str, value: &[u8]) -> anyhow::Result<pb::PutSealedSecretRequest> {
    let r = c.secrets().list_secret_recipients(pb::ListSecretRecipientsRequest { name: name.to_owned() }).await?;
    let r = r.into_inner();
    let project = r.project_id;
    let mut sealed = Vec::with_capacity(r.recipients.len());
    for rcpt in &r.recipients {
        let label = CopyLabel { project: &project, name, version: r.next_version, node: &rcpt.node_id };
        let s = seal::seal(&rcpt.public_key, &label, value)?;
        sealed.push(pb::SealedCopy {
            node_id: rcpt.node_id.clone(),
            enc: s.enc,
            ciphertext: s.ciphertext,
            public_key: rcpt.public_key.clone(),
        });
    }
    if sealed.is_empty() {
        anyhow::bail!("no node of this project can hold a secret yet (no node with a sealing key): enrol one first");
    }
    Ok(pb::PutSealedSecretRequest { name: name.to_owned(), sealed, version: r.next_version })
}

pub(crate) async fn run(c: &Clients, out: &Out, cmd: SecretsCmd) -> anyhow::Result<i32> {
    match cmd {
        SecretsCmd::Put { name, value, from_file, server_side } => {
            let value = read_value(value, from_file)?;
            let r = if server_side {
                let req = pb::PutSecretRequest { name: name.clone(), value: value.to_vec() };
                c.secrets().put_secret(req).await?.into_inner().secret
            } else {
                let mut tries = 0;
                loop {
                    let req = sealed_put(c, &name, &value).await?;
                    match c.secrets().put_sealed_secret(req).await {
                        // Another put took the version: seal again for the next.
                        Err(s) if s.code() == tonic::Code::Aborted && tries < 3 => tries += 1,
                        r => break r?.into_inner().secret,
                    }
                }
            };
            let v = r.clone().unwrap_or_default();
            out.message(
                &pb::GetSecretResponse { secret: r },
                &format!("{} version {} sealed to {} node(s)", v.name, v.version, v.sealed_to.len()),
            );
        }
        SecretsCmd::List => {
            let r = c.secrets().list_secrets(pb::ListSecretsRequest {}).await?.into_inner();
            out.secrets(&r);
        }
        SecretsCmd::Get { secret: (name, version) } => {
            let r = c.secrets().get_secret(pb::GetSecretRequest { name, version }).await?.into_inner();
            out.secret(&r);
        }
        SecretsCmd::Delete { secret: (name, version) } => {
            let r = c.secrets().delete_secret(pb::DeleteSecretRequest { name: name.clone(), version }).await?;
            let r = r.into_inner();
            let versions: Vec<String> = r.versions.iter().map(ToString::to_string).collect();
            out.message(&r, &format!("deleted {name} version(s) {}", versions.join(", ")));
        }
        SecretsCmd::Recipients => {
            let r = c.secrets().list_secret_recipients(pb::ListSecretRecipientsRequest::default()).await?;
            out.secret_recipients(&r.into_inner());
        }
    }
    Ok(0)
}
