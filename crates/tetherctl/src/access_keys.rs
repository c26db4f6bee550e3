//! `tetherctl access-keys`: a project's keys for SigV4-signed REST requests.

use clap::Subcommand;
use tether_proto::pb;

use crate::Clients;
use crate::output::Out;
use crate::tokens::RoleArg;

#[derive(Subcommand)]
pub(crate) enum AccessKeysCmd {
    /// Create a key (the secret is printed once, on the second line).
    Create {
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Get {
        access_key_id: String,
    },
    Revoke {
        access_key_id: String,
    },
}

pub(crate) async fn run(c: &Clients, out: &Out, cmd: AccessKeysCmd) -> anyhow::Result<i32> {
    match cmd {
        AccessKeysCmd::Create { role, description } => {
            let req = pb::CreateAccessKeyRequest { role: role.to_pb() as i32, description };
            let r = c.access_keys().create_access_key(req).await?.into_inner();
            let id = r.access_key.as_ref().map(|k| k.access_key_id.clone()).unwrap_or_default();
            out.message(&r, &format!("{id}\n{}", r.secret_access_key));
        }
        AccessKeysCmd::List => {
            let r = c.access_keys().list_access_keys(pb::ListAccessKeysRequest {}).await?.into_inner();
            out.access_keys(&r.access_keys, &r);
        }
        AccessKeysCmd::Get { access_key_id } => {
            let r = c.access_keys().get_access_key(pb::GetAccessKeyRequest { access_key_id }).await?.into_inner();
            out.access_keys(r.access_key.as_slice(), &r);
        }
        AccessKeysCmd::Revoke { access_key_id } => {
            let r = c.access_keys().revoke_access_key(pb::RevokeAccessKeyRequest { access_key_id }).await?.into_inner();
            let id = r.access_key.as_ref().map(|k| k.access_key_id.as_str()).unwrap_or("");
            out.message(&r, &format!("revoked {id}"));
        }
    }
    Ok(0)
}
