//! Tokens and join tokens.

use tether_store::{StoreError, TokenRecord};
use tether_types::{JoinToken, JoinTokenId, ProjectId, TokenId};

use crate::app::{App, now_ms};

pub async fn token_record(app: &App, t: &TokenRecord) -> Result<(), StoreError> {
    app.effects().commit(app.store.token_record(t).await?);
    Ok(())
}

/// Revokes an operator token; this replica refuses it at once, others
/// within their revocation refresh.
pub async fn token_revoke(app: &App, project: &ProjectId, id: &TokenId) -> Result<TokenRecord, StoreError> {
    let t = app.effects().commit(app.store.token_revoke(project, id, now_ms()).await?);
    app.auth.revoke(id.clone());
    Ok(t)
}

pub async fn join_token_create(app: &App, t: &JoinToken, secret_hash: &[u8]) -> Result<(), StoreError> {
    app.effects().commit(app.store.join_token_create(t, secret_hash).await?);
    Ok(())
}

pub async fn join_token_revoke(app: &App, project: &ProjectId, id: &JoinTokenId) -> Result<JoinToken, StoreError> {
    Ok(app.effects().commit(app.store.join_token_revoke(project, id, now_ms()).await?))
}
