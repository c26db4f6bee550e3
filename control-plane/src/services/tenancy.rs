//! `tether.v1.TenancyService`: join tokens, macaroons, WhoAmI.

use std::sync::Arc;
use std::time::Duration;

use tether_auth::{Caveat, CredentialKind, JoinSecret, Macaroon, random_bytes};
use tether_proto::pb;
use tether_store::TokenRecord;
use tether_types::{
    Error, JoinToken, JoinTokenId, Labels, MAX_TEXT_LEN, Role, TokenId, millis_to_timestamp, validate_labels,
};
use tonic::{Request, Response, Status};

use super::{status, store_status, ttl};
use crate::app::{App, now_ms};

const DEFAULT_TTL: Duration = Duration::from_secs(86400);

pub struct TenancyApi {
    app: Arc<App>,
}

impl TenancyApi {
    pub fn new(app: Arc<App>) -> Self {
        TenancyApi { app }
    }
}

fn token_info(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        token_id: t.id.to_string(),
        role: t.role.to_pb() as i32,
        description: t.description.clone(),
        created_at: Some(millis_to_timestamp(t.created_at)),
        expires_at: t.expires_at.map(millis_to_timestamp),
        revoked_at: t.revoked_at.map(millis_to_timestamp),
    }
}

fn description(s: String) -> Result<String, Status> {
    if tether_types::chars(&s) > MAX_TEXT_LEN {
        return Err(status(Error::invalid(format!("description is longer than {MAX_TEXT_LEN} characters"))));
    }
    Ok(s)
}

#[tonic::async_trait]
impl pb::tenancy_service_server::TenancyService for TenancyApi {
    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Operator)?;
        let req = req.into_inner();
        let ttl = ttl(req.ttl, DEFAULT_TTL)?;
        let labels: Labels = req.labels.into_iter().collect();
        validate_labels(&labels).map_err(status)?;
        let now = now_ms();
        let id = JoinTokenId::from_random(random_bytes());
        let secret = JoinSecret::generate(&id);
        let token = JoinToken {
            id,
            project_id: who.project().clone(),
            description: description(req.description)?,
            labels,
            max_uses: req.max_uses,
            uses: 0,
            created_at: now,
            expires_at: now + ttl.as_millis() as i64,
            revoked_at: None,
        };
        crate::ops::tenancy::join_token_create(&self.app, &token, &secret.secret_hash).await.map_err(store_status)?;
        Ok(Response::new(pb::CreateJoinTokenResponse { join_token: Some(token.to_pb()), token: secret.token }))
    }

    async fn list_join_tokens(
        &self,
        req: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Operator)?;
        let tokens = self
            .app
            .store
            .join_token_list(who.project(), req.get_ref().include_inactive, now_ms())
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListJoinTokensResponse { join_tokens: tokens.iter().map(JoinToken::to_pb).collect() }))
    }

    async fn revoke_join_token(
        &self,
        req: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeJoinTokenResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Operator)?;
        let id = JoinTokenId::parse(&req.get_ref().join_token_id).map_err(status)?;
        let t = crate::ops::tenancy::join_token_revoke(&self.app, who.project(), &id).await.map_err(store_status)?;
        Ok(Response::new(pb::RevokeJoinTokenResponse { join_token: Some(t.to_pb()) }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Admin)?;
        let req = req.into_inner();
        let role = Role::from_pb(req.role).map_err(status)?;
        if role > who.role() {
            return Err(status(Error::permission_denied("cannot mint a token with a higher role than your own")));
        }
        let ttl = ttl(req.ttl, DEFAULT_TTL)?;
        let now = now_ms();
        let mut expires_at = now + ttl.as_millis() as i64;
        // A minted token never outlives the one that minted it.
        if let Some(parent) = who.claims.expires_at {
            expires_at = expires_at.min(parent);
        }
        let id = TokenId::from_random(random_bytes());
        let mut caveats = vec![Caveat::Kind(CredentialKind::Operator)];
        if let Some(org) = who.org() {
            caveats.push(Caveat::Org(org.clone()));
        }
        caveats.extend([Caveat::Project(who.project().clone()), Caveat::Role(role), Caveat::ExpiresAt(expires_at)]);
        let m = Macaroon::mint(self.app.auth.root(), id.clone(), &caveats);
        let record = TokenRecord {
            id: id.clone(),
            project_id: who.project().clone(),
            role,
            description: description(req.description)?,
            created_at: now,
            expires_at: Some(expires_at),
            revoked_at: None,
        };
        crate::ops::tenancy::token_record(&self.app, &record).await.map_err(store_status)?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: m.encode(),
            token_id: id.to_string(),
            expires_at: Some(millis_to_timestamp(expires_at)),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Admin)?;
        let tokens = self.app.store.token_list(who.project()).await.map_err(store_status)?;
        Ok(Response::new(pb::ListTokensResponse { tokens: tokens.iter().map(token_info).collect() }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Admin)?;
        let id = TokenId::parse(&req.get_ref().token_id).map_err(status)?;
        let t = crate::ops::tenancy::token_revoke(&self.app, who.project(), &id).await.map_err(store_status)?;
        Ok(Response::new(pb::RevokeTokenResponse { token: Some(token_info(&t)) }))
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Viewer)?;
        Ok(Response::new(pb::WhoAmIResponse {
            token_id: who.claims.token_id.to_string(),
            organization_id: who.org().map(ToString::to_string).unwrap_or_default(),
            project_id: who.project().to_string(),
            role: who.role().to_pb() as i32,
            expires_at: who.claims.expires_at.map(millis_to_timestamp),
        }))
    }
}
