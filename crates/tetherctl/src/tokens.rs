//! `tetherctl tokens` and `tetherctl join-tokens`.

use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use tether_proto::pb;

use crate::Clients;
use crate::output::Out;
use crate::spec::parse_kv;
use tether_types::duration_to_pb;

#[derive(Subcommand)]
pub(crate) enum TokensCmd {
    /// Mint a token for this project, or with --org-role an organisation token.
    Create {
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Mint an organisation token with this role (org-admin only).
        #[arg(long, value_enum)]
        org_role: Option<OrgRoleArg>,
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Revoke {
        token_id: String,
    },
    /// Ask the control plane whether a token is valid and what it grants.
    Verify {
        token: String,
    },
    /// Sign new tokens with a new root key (platform administrator); tokens
    /// signed before stay valid until they expire.
    RotateRootKey,
    /// Narrow the token given with --token or --token-file, offline (no call
    /// to the control plane): a shorter life, a lower role, one node, one
    /// workload, read-only. Prints the new token; the original stays as it
    /// was. Caveats only narrow: a role above the token's own changes nothing.
    Attenuate {
        #[command(flatten)]
        narrow: Narrow,
    },
}

/// How `tokens attenuate` narrows a token.
#[derive(clap::Args)]
pub(crate) struct Narrow {
    /// Expire this long from now (or at the token's own expiry, if sooner).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    #[arg(long, value_enum)]
    role: Option<RoleArg>,
    /// Only calls about this node (NodeService, WhoAmI).
    #[arg(long)]
    node: Option<String>,
    /// Only calls about this workload (WorkloadService, WhoAmI).
    #[arg(long)]
    workload: Option<String>,
    /// Only calls that change nothing.
    #[arg(long)]
    read_only: bool,
}

/// `tokens attenuate`: adds caveats to `token` without the root key.
pub(crate) fn attenuate(token: &str, n: &Narrow) -> anyhow::Result<String> {
    use tether_auth::{Caveat, Macaroon};
    use tether_types::{NodeId, Role, WorkloadId};
    let Narrow { ttl, role, node, workload, read_only } = n;
    if ttl.is_none() && role.is_none() && node.is_none() && workload.is_none() && !read_only {
        anyhow::bail!("say how to narrow the token: --ttl, --role, --node, --workload, --read-only");
    }
    let mut m = Macaroon::decode(token).map_err(|e| anyhow::anyhow!("the token is not a Tether token: {e}"))?;
    if let Some(n) = node {
        m = m.attenuate(&Caveat::Node(NodeId::parse(n).map_err(|e| anyhow::anyhow!("--node: {}", e.message))?));
    }
    if let Some(w) = workload {
        let w = WorkloadId::parse(w).map_err(|e| anyhow::anyhow!("--workload: {}", e.message))?;
        m = m.attenuate(&Caveat::Workload(w));
    }
    if *read_only {
        m = m.attenuate(&Caveat::ReadOnly);
    }
    if let Some(ttl) = *ttl {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let at = i64::try_from((now + ttl).as_millis())?;
        m = m.attenuate(&Caveat::ExpiresAt(at));
    }
    if let Some(r) = *role {
        let r = match r {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Support => Role::Support,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        };
        m = m.attenuate(&Caveat::Role(r));
    }
    Ok(m.encode())
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum RoleArg {
    Viewer,
    Support,
    Operator,
    Admin,
}

impl RoleArg {
    pub(crate) fn to_pb(self) -> pb::Role {
        match self {
            RoleArg::Viewer => pb::Role::Viewer,
            RoleArg::Support => pb::Role::Support,
            RoleArg::Operator => pb::Role::Operator,
            RoleArg::Admin => pb::Role::Admin,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum OrgRoleArg {
    OrgViewer,
    OrgAdmin,
}

#[derive(Subcommand)]
pub(crate) enum JoinTokensCmd {
    Create {
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// 0 means unlimited.
        #[arg(long, default_value_t = 0)]
        max_uses: u32,
        /// Labels forced on nodes that join with it, KEY=VALUE.
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        #[arg(long, default_value = "")]
        description: String,
    },
    List {
        /// Include revoked and expired ones.
        #[arg(long)]
        all: bool,
    },
    Revoke {
        join_token_id: String,
    },
}

pub(crate) async fn tokens(c: &Clients, out: &Out, cmd: TokensCmd) -> anyhow::Result<i32> {
    match cmd {
        TokensCmd::Create { role, org_role, ttl, description } => {
            let org_role = match org_role {
                None => pb::OrgRole::Unspecified,
                Some(OrgRoleArg::OrgViewer) => pb::OrgRole::Viewer,
                Some(OrgRoleArg::OrgAdmin) => pb::OrgRole::Admin,
            };
            let role = role.to_pb();
            let r = c
                .tenancy()
                .create_token(pb::CreateTokenRequest {
                    role: role as i32,
                    ttl: ttl.map(duration_to_pb),
                    description,
                    org_role: org_role as i32,
                })
                .await?
                .into_inner();
            out.created_token(&r);
        }
        TokensCmd::List => {
            let r = c.tenancy().list_tokens(pb::ListTokensRequest {}).await?.into_inner();
            out.tokens(&r);
        }
        TokensCmd::Revoke { token_id } => {
            let r = c.tenancy().revoke_token(pb::RevokeTokenRequest { token_id }).await?.into_inner();
            out.message(&r, &format!("revoked {}", r.token.as_ref().map(|t| t.token_id.as_str()).unwrap_or("")));
        }
        TokensCmd::Verify { token } => {
            let r = c.tenancy().verify_token(pb::VerifyTokenRequest { token }).await?.into_inner();
            let text = if r.valid {
                let role = crate::output::short(pb::Role::try_from(r.role));
                format!("valid: {} ({role}{})", r.token_id, if r.read_only { ", read-only" } else { "" })
            } else {
                format!("not valid: {}", r.reason)
            };
            out.message(&r, &text);
            return Ok(if r.valid { 0 } else { 1 });
        }
        TokensCmd::RotateRootKey => {
            let r = c.tenancy().rotate_root_key(pb::RotateRootKeyRequest {}).await?.into_inner();
            out.message(&r, &format!("new tokens are signed with root key {}", r.root_key_id));
        }
        TokensCmd::Attenuate { .. } => unreachable!("handled offline, before connecting"),
    }
    Ok(0)
}

pub(crate) async fn join_tokens(c: &Clients, out: &Out, cmd: JoinTokensCmd) -> anyhow::Result<i32> {
    match cmd {
        JoinTokensCmd::Create { ttl, max_uses, labels, description } => {
            let r = c
                .tenancy()
                .create_join_token(pb::CreateJoinTokenRequest {
                    ttl: ttl.map(duration_to_pb),
                    max_uses,
                    labels: labels.into_iter().collect(),
                    description,
                })
                .await?
                .into_inner();
            out.created_join_token(&r);
        }
        JoinTokensCmd::List { all } => {
            let r =
                c.tenancy().list_join_tokens(pb::ListJoinTokensRequest { include_inactive: all }).await?.into_inner();
            out.join_tokens(&r);
        }
        JoinTokensCmd::Revoke { join_token_id } => {
            let r = c.tenancy().revoke_join_token(pb::RevokeJoinTokenRequest { join_token_id }).await?.into_inner();
            out.message(
                &r,
                &format!("revoked {}", r.join_token.as_ref().map(|t| t.join_token_id.as_str()).unwrap_or("")),
            );
        }
    }
    Ok(0)
}
