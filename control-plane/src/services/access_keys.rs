//! `tether.v1.AccessKeyService`: projects' access keys for SigV4-signed REST
//! requests, and ResolveAccessKey for gateways (the internal token only).
//! The signature check itself is [`verify_signed`], which the REST bridge
//! calls before a signed request reaches a service.

use std::sync::Arc;

use tether_auth::random_bytes;
use tether_auth::sigv4::{self, Authorization};
use tether_proto::pb;
use tether_store::AccessKeyRecord;
use tether_types::{AccessKeyId, Error, Role, millis_to_timestamp};
use tonic::{Request, Response, Status};

use super::tenancy::description;
use super::{status, store_status};
use crate::app::{App, now_ms};
use crate::auth::AccessKeyCaller;

pub struct AccessKeyApi {
    app: Arc<App>,
}

impl AccessKeyApi {
    pub fn new(app: Arc<App>) -> Self {
        AccessKeyApi { app }
    }

    /// The caller's project's key `id`; NOT_FOUND for any other.
    async fn own(&self, project: &tether_types::ProjectId, id: &str) -> Result<AccessKeyRecord, Status> {
        let id = AccessKeyId::parse(id).map_err(status)?;
        match self.app.store.access_key_get(&id).await.map_err(store_status)? {
            Some(k) if &k.project_id == project => Ok(k),
            _ => Err(status(Error::not_found(format!("access key {id} not found")))),
        }
    }
}

fn to_pb(k: &AccessKeyRecord) -> pb::AccessKey {
    pb::AccessKey {
        access_key_id: k.id.to_string(),
        organization_id: k.org_id.to_string(),
        project_id: k.project_id.to_string(),
        role: k.role.to_pb() as i32,
        description: k.description.clone(),
        created_at: Some(millis_to_timestamp(k.created_at)),
        revoked_at: k.revoked_at.map(millis_to_timestamp),
    }
}

/// The secret of a key, from the root key it names.
fn secret(app: &App, k: &AccessKeyRecord) -> Result<String, Error> {
    let root = app
        .auth
        .root_key(k.root_key_id)
        .ok_or_else(|| Error::internal(format!("access key {}: root key {} is missing", k.id, k.root_key_id)))?;
    Ok(sigv4::access_key_secret(&root, &k.id))
}

/// Checks a SigV4-signed REST request: the key exists, is not revoked, its
/// project still exists, and the signature (method, path, query, signed
/// headers, body, date within 15 minutes) is the key's.
pub async fn verify_signed(app: &App, call: &tether_rest::SignedCall) -> Result<AccessKeyCaller, Error> {
    let header = call.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let auth = Authorization::parse(header).map_err(|e| Error::unauthenticated(e.to_string()))?;
    let refused = || Error::unauthenticated("the access key is not valid");
    let id = AccessKeyId::parse(&auth.access_key_id).map_err(|_| refused())?;
    let k = app.store.access_key_get(&id).await?.ok_or_else(refused)?;
    if k.revoked_at.is_some() || app.auth.tenants.get().project(&k.project_id).is_none() {
        return Err(refused());
    }
    let headers: Vec<(String, String)> =
        call.headers.iter().filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned()))).collect();
    let req = sigv4::Request {
        method: call.method.as_str(),
        path: &call.path,
        query: &call.query,
        headers: &headers,
        body: &call.body,
    };
    sigv4::verify(&auth, &req, &secret(app, &k)?, &app.config.sigv4_region, now_ms())
        .map_err(|e| Error::unauthenticated(e.to_string()))?;
    Ok(AccessKeyCaller { id: k.id, org: k.org_id, project: k.project_id, role: k.role, key_id: k.root_key_id })
}

/// Today's date as YYYYMMDD (UTC).
fn today() -> String {
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms().max(0) as u64);
    humantime::format_rfc3339_seconds(now).to_string()[..10].replace('-', "")
}

#[tonic::async_trait]
impl pb::access_key_service_server::AccessKeyService for AccessKeyApi {
    async fn create_access_key(
        &self,
        req: Request<pb::CreateAccessKeyRequest>,
    ) -> Result<Response<pb::CreateAccessKeyResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Admin)?;
        let req = req.into_inner();
        let role = Role::from_pb(req.role).map_err(status)?;
        if role > p.role {
            return Err(status(Error::permission_denied(
                "cannot create an access key with a higher role than your own",
            )));
        }
        let root = self.app.auth.signing_key();
        let k = AccessKeyRecord {
            id: AccessKeyId::from_random(random_bytes()),
            org_id: p.org().clone(),
            project_id: p.id().clone(),
            role,
            description: description(req.description)?,
            root_key_id: root.id(),
            created_at: now_ms(),
            revoked_at: None,
        };
        self.app.effects().commit(self.app.store.access_key_create(&k).await.map_err(store_status)?);
        Ok(Response::new(pb::CreateAccessKeyResponse {
            access_key: Some(to_pb(&k)),
            secret_access_key: sigv4::access_key_secret(&root, &k.id),
        }))
    }

    async fn list_access_keys(
        &self,
        req: Request<pb::ListAccessKeysRequest>,
    ) -> Result<Response<pb::ListAccessKeysResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Admin)?;
        let keys = self.app.store.access_key_list(p.id()).await.map_err(store_status)?;
        Ok(Response::new(pb::ListAccessKeysResponse { access_keys: keys.iter().map(to_pb).collect() }))
    }

    async fn get_access_key(
        &self,
        req: Request<pb::GetAccessKeyRequest>,
    ) -> Result<Response<pb::GetAccessKeyResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.project.as_ref().ok_or_else(|| status(Error::invalid("name a project")))?;
        let k = self.own(p.id(), &req.get_ref().access_key_id).await?;
        who.in_project(Role::Admin)?;
        Ok(Response::new(pb::GetAccessKeyResponse { access_key: Some(to_pb(&k)) }))
    }

    async fn revoke_access_key(
        &self,
        req: Request<pb::RevokeAccessKeyRequest>,
    ) -> Result<Response<pb::RevokeAccessKeyResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.project.as_ref().ok_or_else(|| status(Error::invalid("name a project")))?;
        let k = self.own(p.id(), &req.get_ref().access_key_id).await?;
        let p = who.in_project(Role::Admin)?;
        let k = self
            .app
            .effects()
            .commit(self.app.store.access_key_revoke(p.id(), &k.id, now_ms()).await.map_err(store_status)?);
        Ok(Response::new(pb::RevokeAccessKeyResponse { access_key: Some(to_pb(&k)) }))
    }

    async fn resolve_access_key(
        &self,
        req: Request<pb::ResolveAccessKeyRequest>,
    ) -> Result<Response<pb::ResolveAccessKeyResponse>, Status> {
        self.app.auth.internal(&req)?;
        let req = req.into_inner();
        let id = AccessKeyId::parse(&req.access_key_id).map_err(status)?;
        let missing = || status(Error::not_found(format!("access key {id} not found")));
        let k = self.app.store.access_key_get(&id).await.map_err(store_status)?.ok_or_else(missing)?;
        if k.revoked_at.is_some() {
            return Err(missing());
        }
        let date = if req.date.is_empty() { today() } else { req.date };
        let region = self.app.config.sigv4_region.clone();
        let key = sigv4::signing_key(&secret(&self.app, &k).map_err(status)?, &date, &region, "tether");
        Ok(Response::new(pb::ResolveAccessKeyResponse {
            access_key: Some(to_pb(&k)),
            signing_key: key.to_vec(),
            date,
            region,
            service: "tether".into(),
        }))
    }
}
