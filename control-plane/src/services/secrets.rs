//! `tether.v1.SecretService`: sealed secrets. The control plane stores only
//! copies sealed to nodes' X25519 keys (`tether_auth::seal`); a plaintext
//! put is sealed to every recipient on arrival and dropped. Nodes that
//! enrol later get a copy from a node that holds one
//! ([`crate::background::Reseal`]).

use std::collections::HashSet;
use std::sync::Arc;

use tether_auth::seal::{self, CopyLabel};
use tether_proto::pb;
use tether_store::{SecretCopy, SecretVersionRecord, StoreError};
use tether_types::{
    Error, NodeId, NodeTransport, ProjectAccess, Role, millis_to_timestamp, secret::MAX_SECRET_BYTES,
    secret::validate_secret_name,
};
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::{status, store_status};
use crate::app::{App, now_ms};
use crate::effects::Signal;
use crate::fleet::snapshot::NodeSnapshot;

pub struct SecretApi {
    app: Arc<App>,
}

impl SecretApi {
    pub fn new(app: Arc<App>) -> Self {
        SecretApi { app }
    }

    /// Writes a version with its copies and wakes the reseal task for the
    /// recipients the copies missed.
    async fn store(
        &self,
        project: &tether_types::ProjectId,
        name: &str,
        version: u32,
        copies: &[SecretCopy],
    ) -> Result<SecretVersionRecord, Status> {
        let stored = self.app.store.secret_put(project, name, version, copies, now_ms()).await.map_err(store_status)?;
        Ok(self.app.effects().wake(Signal::Reseal).commit(stored))
    }
}

/// Nothing could ever open a secret stored now.
fn no_recipient() -> Error {
    Error::precondition(
        "no node of this project can hold a secret yet (no node with a sealing key): enrol one, or grant a pool",
    )
}

/// A node a project's secrets are sealed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub node: NodeId,
    pub public_key: Vec<u8>,
}

/// The nodes a project's secrets are sealed to: those it may place work
/// on (dedicated to it, or in a pool granted to it) that hold streams
/// (HTTP agents run no work) and registered a sealing key.
pub async fn recipients(app: &App, access: &ProjectAccess) -> Result<Vec<Recipient>, StoreError> {
    let snap = app.nodes.get(&app.store).await?;
    let keys = app.store.node_sealing_keys().await?;
    Ok(recipients_among(&snap, &keys, access))
}

/// `node`, should it be a recipient of the project's secrets, with its key
/// (one node's row, not every node's).
pub async fn recipient(app: &App, access: &ProjectAccess, node: &NodeId) -> Result<Option<Recipient>, StoreError> {
    let Some(key) = app.store.node_sealing_key(node).await? else { return Ok(None) };
    let snap = app.nodes.get(&app.store).await?;
    Ok(recipients_among(&snap, &[(node.clone(), key)], access).pop())
}

/// [`recipients`] from a node snapshot and every node's sealing key.
pub fn recipients_among(snap: &NodeSnapshot, keys: &[(NodeId, Vec<u8>)], access: &ProjectAccess) -> Vec<Recipient> {
    keys.iter()
        .filter(|(id, _)| {
            snap.index.get(id).is_some_and(|&i| {
                snap.nodes[i].transport == NodeTransport::Grpc && access.may_use(snap.base_views[i].place())
            })
        })
        .map(|(node, public_key)| Recipient { node: node.clone(), public_key: public_key.clone() })
        .collect()
}

fn version_pb(v: &SecretVersionRecord) -> pb::SecretVersion {
    pb::SecretVersion {
        name: v.name.clone(),
        version: v.version,
        project_id: v.project_id.to_string(),
        created_at: Some(millis_to_timestamp(v.created_at)),
        created_by: v.created_by.clone(),
        sealed_to: v.sealed_to.iter().map(ToString::to_string).collect(),
    }
}

fn version_arg(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

/// Checks client-sealed copies against the recipients: each names a
/// recipient once, with the key it has now, and is shaped like a copy.
fn checked_copies(sealed: Vec<pb::SealedCopy>, recipients: &[Recipient]) -> Result<Vec<SecretCopy>, Error> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(sealed.len());
    for c in sealed {
        let node = NodeId::parse(&c.node_id)?;
        // Checked before the copy's shape: the recipients are the state a
        // client seals against, and it may have changed since it listed them.
        let Some(r) = recipients.iter().find(|r| r.node == node) else {
            return Err(Error::precondition(format!(
                "sealed: node {node} is not a recipient of this project's secrets (see ListSecretRecipients)"
            )));
        };
        if c.public_key != r.public_key {
            return Err(Error::precondition(format!(
                "sealed: the copy for {node} is sealed to another key than the node's; list the recipients again"
            )));
        }
        if !seen.insert(node.clone()) {
            return Err(Error::invalid(format!("sealed: two copies for node {node}")));
        }
        if c.enc.len() != seal::KEY_LEN {
            return Err(Error::invalid(format!("sealed: the copy for {node} has no {}-byte enc", seal::KEY_LEN)));
        }
        // A value of at most 64 KiB and its 16-byte tag.
        if c.ciphertext.len() < 16 || c.ciphertext.len() > MAX_SECRET_BYTES + 16 {
            return Err(Error::invalid(format!("sealed: the copy for {node} is not a sealed value of at most 64 KiB")));
        }
        out.push(SecretCopy { node_id: node, public_key: c.public_key, enc: c.enc, ciphertext: c.ciphertext });
    }
    Ok(out)
}

#[tonic::async_trait]
impl pb::secret_service_server::SecretService for SecretApi {
    async fn list_secret_recipients(
        &self,
        req: Request<pb::ListSecretRecipientsRequest>,
    ) -> Result<Response<pb::ListSecretRecipientsResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Viewer)?;
        let name = req.into_inner().name;
        let next_version = if name.is_empty() {
            0
        } else {
            validate_secret_name(&name).map_err(status)?;
            self.app.store.secret_next_version(p.id(), &name).await.map_err(store_status)?
        };
        let r = recipients(&self.app, &p.access).await.map_err(store_status)?;
        Ok(Response::new(pb::ListSecretRecipientsResponse {
            next_version,
            project_id: p.id().to_string(),
            recipients: r
                .into_iter()
                .map(|r| pb::SecretRecipient { node_id: r.node.to_string(), public_key: r.public_key })
                .collect(),
            suite: seal::SUITE.to_owned(),
        }))
    }

    async fn put_secret(&self, req: Request<pb::PutSecretRequest>) -> Result<Response<pb::PutSecretResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Admin)?.clone();
        let req = req.into_inner();
        let value = Zeroizing::new(req.value);
        validate_secret_name(&req.name).map_err(status)?;
        if value.len() > MAX_SECRET_BYTES {
            return Err(status(Error::invalid(format!("a secret is at most {MAX_SECRET_BYTES} bytes"))));
        }
        let recipients = recipients(&self.app, &p.access).await.map_err(store_status)?;
        if recipients.is_empty() {
            return Err(status(no_recipient()));
        }
        // Each copy is sealed under the version it will be stored as: the
        // next one; the write refuses should another put take it meanwhile.
        let version = self.app.store.secret_next_version(p.id(), &req.name).await.map_err(store_status)?;
        let mut copies = Vec::with_capacity(recipients.len());
        for r in &recipients {
            let label = CopyLabel { project: p.id().as_str(), name: &req.name, version, node: r.node.as_str() };
            let s = seal::seal(&r.public_key, &label, &value).map_err(|e| status(Error::internal(e.to_string())))?;
            copies.push(SecretCopy {
                node_id: r.node.clone(),
                public_key: r.public_key.clone(),
                enc: s.enc,
                ciphertext: s.ciphertext,
            });
        }
        let v = self.store(p.id(), &req.name, version, &copies).await?;
        Ok(Response::new(pb::PutSecretResponse { secret: Some(version_pb(&v)) }))
    }

    async fn put_sealed_secret(
        &self,
        req: Request<pb::PutSealedSecretRequest>,
    ) -> Result<Response<pb::PutSealedSecretResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Admin)?.clone();
        let req = req.into_inner();
        validate_secret_name(&req.name).map_err(status)?;
        if req.version == 0 {
            return Err(status(Error::invalid(
                "version is the one the copies were sealed for (ListSecretRecipients.next_version)",
            )));
        }
        let recipients = recipients(&self.app, &p.access).await.map_err(store_status)?;
        let copies = checked_copies(req.sealed, &recipients).map_err(status)?;
        if copies.is_empty() {
            return Err(status(no_recipient()));
        }
        let v = self.store(p.id(), &req.name, req.version, &copies).await?;
        Ok(Response::new(pb::PutSealedSecretResponse { secret: Some(version_pb(&v)) }))
    }

    async fn list_secrets(
        &self,
        req: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Viewer)?;
        let list = self.app.store.secret_list(p.id()).await.map_err(store_status)?;
        Ok(Response::new(pb::ListSecretsResponse {
            secrets: list
                .into_iter()
                .map(|s| pb::Secret {
                    latest: s.versions.last().copied().unwrap_or(0),
                    name: s.name,
                    versions: s.versions,
                    updated_at: Some(millis_to_timestamp(s.updated_at)),
                })
                .collect(),
        }))
    }

    async fn get_secret(&self, req: Request<pb::GetSecretRequest>) -> Result<Response<pb::GetSecretResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Viewer)?;
        let req = req.into_inner();
        match self.app.store.secret_get(p.id(), &req.name, version_arg(req.version)).await.map_err(store_status)? {
            Some(v) => Ok(Response::new(pb::GetSecretResponse { secret: Some(version_pb(&v)) })),
            None => Err(status(Error::not_found(match req.version {
                0 => format!("secret {} not found", req.name),
                v => format!("secret {} version {v} not found", req.name),
            }))),
        }
    }

    async fn delete_secret(
        &self,
        req: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Admin)?;
        let req = req.into_inner();
        let deleted = self
            .app
            .store
            .secret_delete(p.id(), &req.name, version_arg(req.version), now_ms())
            .await
            .map_err(store_status)?;
        let versions = self.app.effects().commit(deleted);
        if versions.is_empty() {
            return Err(status(Error::not_found(format!("secret {} not found", req.name))));
        }
        Ok(Response::new(pb::DeleteSecretResponse { versions }))
    }
}
