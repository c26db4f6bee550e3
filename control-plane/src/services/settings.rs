//! `tether.v1.SettingsService`: an organisation's runtime settings,
//! versioned; the loops read them at every activation (see
//! `background::StaleNodes`).

use std::sync::Arc;

use tether_proto::pb;
use tether_store::OrgSettingsRecord;
use tether_types::settings::{OrgSettings, SettingsDefaults};
use tether_types::{OrgId, OrgRole, millis_to_timestamp};
use tonic::{Request, Response, Status};

use super::{status, store_status};
use crate::app::{App, now_ms};

pub struct SettingsApi {
    app: Arc<App>,
}

impl SettingsApi {
    pub fn new(app: Arc<App>) -> Self {
        SettingsApi { app }
    }
}

/// The defaults the control plane's flags give.
pub fn defaults(app: &App) -> SettingsDefaults {
    let ttl = app.config.stale_node_ttl;
    SettingsDefaults { stale_node_ttl: (!ttl.is_zero()).then_some(ttl) }
}

fn answer(app: &App, r: &OrgSettingsRecord) -> pb::GetSettingsResponse {
    pb::GetSettingsResponse {
        settings: Some(r.settings.to_pb()),
        effective: Some(r.settings.effective(&defaults(app)).to_pb()),
        version: r.version,
        updated_at: (r.version > 0).then(|| millis_to_timestamp(r.updated_at)),
        updated_by: r.updated_by.clone(),
    }
}

#[tonic::async_trait]
impl pb::settings_service_server::SettingsService for SettingsApi {
    async fn get_settings(
        &self,
        req: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::GetSettingsResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let org = OrgId::parse(&req.get_ref().organization_id).map_err(status)?;
        who.in_org(&org, OrgRole::Viewer)?;
        let r = self.app.store.org_settings(&org).await.map_err(store_status)?;
        Ok(Response::new(answer(&self.app, &r)))
    }

    async fn update_settings(
        &self,
        req: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::UpdateSettingsResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let req = req.into_inner();
        let org = OrgId::parse(&req.organization_id).map_err(status)?;
        who.in_org(&org, OrgRole::Admin)?;
        let settings = OrgSettings::from_pb(req.settings.as_ref()).map_err(status)?;
        let stored = self
            .app
            .store
            .org_settings_put(&org, &settings, req.expected_version, now_ms())
            .await
            .map_err(store_status)?;
        let r = self.app.effects().commit(stored);
        tracing::info!(organization = %org, version = r.version, "settings updated");
        let a = answer(&self.app, &r);
        Ok(Response::new(pb::UpdateSettingsResponse {
            settings: a.settings,
            effective: a.effective,
            version: a.version,
            updated_at: a.updated_at,
            updated_by: a.updated_by,
        }))
    }
}
