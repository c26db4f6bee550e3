//! `tetherctl orgs` and `tetherctl projects`.

use std::time::Duration;

use clap::Subcommand;
use tether_proto::pb;
use tether_types::duration_to_pb;

use crate::Clients;
use crate::output::Out;
use crate::spec::parse_kv;

#[derive(Subcommand)]
pub(crate) enum OrgsCmd {
    /// Create an organisation (platform administrator).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Get {
        organization_id: String,
    },
    /// Delete an organisation; --force deletes its projects and nodes first.
    Delete {
        organization_id: String,
        #[arg(long)]
        force: bool,
    },
    /// Let a project place work on one of the organisation's pools.
    Grant {
        organization_id: String,
        #[arg(long)]
        pool: String,
        #[arg(long = "to")]
        project_id: String,
    },
    /// Withdraw a pool grant.
    Revoke {
        organization_id: String,
        #[arg(long)]
        pool: String,
        #[arg(long = "from")]
        project_id: String,
    },
    /// List the organisation's pool grants.
    Grants {
        organization_id: String,
    },
    /// A join token that enrols nodes into one of the organisation's pools.
    JoinToken {
        organization_id: String,
        /// "default" when unset.
        #[arg(long, default_value = "")]
        pool: String,
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// 0 means unlimited.
        #[arg(long, default_value_t = 0)]
        max_uses: u32,
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ProjectsCmd {
    /// Create a project (organisation admin); in the caller's organisation
    /// unless --org names another.
    Create {
        name: String,
        #[arg(long = "org", default_value = "")]
        organization_id: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    /// A project with its quota and what its running work uses of it.
    Get {
        project_id: String,
    },
    /// Set the project's quota (organisation admin); unset limits are unlimited.
    Quota {
        project_id: String,
        #[arg(long)]
        cpu_millis: Option<u64>,
        #[arg(long)]
        memory_mb: Option<u64>,
        #[arg(long)]
        gpus: Option<u64>,
        #[arg(long)]
        allocations: Option<u64>,
    },
    /// Delete a project; --force cancels its jobs, deletes its workloads and
    /// deregisters its dedicated nodes first.
    Delete {
        project_id: String,
        #[arg(long)]
        force: bool,
    },
}

pub(crate) async fn orgs(c: &Clients, out: &Out, cmd: OrgsCmd) -> anyhow::Result<i32> {
    match cmd {
        OrgsCmd::Create { name, description } => {
            let r = c
                .orgs()
                .create_organization(pb::CreateOrganizationRequest { name, description, labels: Default::default() })
                .await?
                .into_inner();
            let id = r.organization.as_ref().map(|o| o.organization_id.clone()).unwrap_or_default();
            out.message(&r, &id);
        }
        OrgsCmd::List => {
            let r = c.orgs().list_organizations(pb::ListOrganizationsRequest {}).await?.into_inner();
            out.orgs(&r);
        }
        OrgsCmd::Get { organization_id } => {
            let r = c.orgs().get_organization(pb::GetOrganizationRequest { organization_id }).await?.into_inner();
            let o = r.organization.clone().unwrap_or_default();
            out.message(&r, &format!("{} {} {}", o.organization_id, o.name, o.description));
        }
        OrgsCmd::Delete { organization_id, force } => {
            let r = c
                .orgs()
                .delete_organization(pb::DeleteOrganizationRequest { organization_id, force })
                .await?
                .into_inner();
            let id = r.organization.as_ref().map(|o| o.organization_id.clone()).unwrap_or_default();
            out.message(&r, &format!("deleted {id}"));
        }
        OrgsCmd::Grant { organization_id, pool, project_id } => {
            let r = c.orgs().grant_pool(pb::GrantPoolRequest { organization_id, pool, project_id }).await?.into_inner();
            let g = r.grant.clone().unwrap_or_default();
            out.message(&r, &format!("granted pool {} to {}", g.pool, g.project_id));
        }
        OrgsCmd::Revoke { organization_id, pool, project_id } => {
            let r =
                c.orgs().revoke_pool(pb::RevokePoolRequest { organization_id, pool, project_id }).await?.into_inner();
            let g = r.grant.clone().unwrap_or_default();
            out.message(&r, &format!("revoked pool {} from {}", g.pool, g.project_id));
        }
        OrgsCmd::Grants { organization_id } => {
            let r = c.orgs().list_pool_grants(pb::ListPoolGrantsRequest { organization_id }).await?.into_inner();
            out.grants(&r);
        }
        OrgsCmd::JoinToken { organization_id, pool, ttl, max_uses, labels } => {
            let r = c
                .orgs()
                .create_organization_join_token(pb::CreateOrganizationJoinTokenRequest {
                    organization_id,
                    pool,
                    ttl: ttl.map(duration_to_pb),
                    max_uses,
                    labels: labels.into_iter().collect(),
                    description: String::new(),
                })
                .await?
                .into_inner();
            let r = pb::CreateJoinTokenResponse { join_token: r.join_token, token: r.token };
            out.created_join_token(&r);
        }
    }
    Ok(0)
}

pub(crate) async fn projects(c: &Clients, out: &Out, cmd: ProjectsCmd) -> anyhow::Result<i32> {
    match cmd {
        ProjectsCmd::Create { name, organization_id, description } => {
            let r = c
                .projects()
                .create_project(pb::CreateProjectRequest {
                    organization_id,
                    name,
                    description,
                    labels: Default::default(),
                    quota: None,
                })
                .await?
                .into_inner();
            let id = r.project.as_ref().map(|p| p.project_id.clone()).unwrap_or_default();
            out.message(&r, &id);
        }
        ProjectsCmd::List => {
            let r = c.projects().list_projects(pb::ListProjectsRequest {}).await?.into_inner();
            out.projects(&r);
        }
        ProjectsCmd::Get { project_id } => {
            let r = c.projects().get_project(pb::GetProjectRequest { project_id }).await?.into_inner();
            out.project(&r);
        }
        ProjectsCmd::Quota { project_id, cpu_millis, memory_mb, gpus, allocations } => {
            let quota = pb::Quota { cpu_millis, memory_mb, gpus, allocations };
            let r = c
                .projects()
                .set_project_quota(pb::SetProjectQuotaRequest { project_id, quota: Some(quota) })
                .await?
                .into_inner();
            let id = r.project.as_ref().map(|p| p.project_id.clone()).unwrap_or_default();
            out.message(&r, &format!("quota set on {id}"));
        }
        ProjectsCmd::Delete { project_id, force } => {
            let r = c.projects().delete_project(pb::DeleteProjectRequest { project_id, force }).await?.into_inner();
            let id = r.project.as_ref().map(|p| p.project_id.clone()).unwrap_or_default();
            out.message(&r, &format!("deleted {id}"));
        }
    }
    Ok(0)
}
