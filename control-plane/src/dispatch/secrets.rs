//! Sealed secrets in the work pass: work that needs secrets is placed only
//! on nodes that hold a copy of each, and its assignment carries the copies
//! sealed to the node it is sent to.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tether_store::{SecretCopy, StoreError};
use tether_types::{NodeId, ProjectId, Resealed, SealedSecret, SecretRef, secret::MAX_SECRET_BYTES};

use crate::app::{App, now_ms};
use crate::effects::{Effects, Signal};

/// Which nodes hold each secret version, read once per work pass: many
/// pending jobs naming the same secret cost one read, not one each.
#[derive(Default)]
pub(super) struct Holders(HashMap<(ProjectId, String, u32), Arc<HashSet<NodeId>>>);

impl Holders {
    async fn of(&mut self, app: &App, project: &ProjectId, r: &SecretRef) -> Result<Arc<HashSet<NodeId>>, StoreError> {
        let key = (project.clone(), r.name.clone(), r.version);
        if let Some(h) = self.0.get(&key) {
            return Ok(h.clone());
        }
        let version = (r.version != 0).then_some(r.version);
        let held: HashSet<NodeId> = match app.store.secret_get(project, &r.name, version).await? {
            Some(v) => v.sealed_to.into_iter().collect(),
            None => HashSet::new(),
        };
        Ok(self.0.entry(key).or_insert(Arc::new(held)).clone())
    }

    /// The nodes holding a copy of every secret `refs` names; `None`
    /// without refs. A ref to a version that does not exist (or was
    /// deleted) gives the empty set: the work waits, and says why.
    pub(super) async fn all(
        &mut self,
        app: &App,
        project: &ProjectId,
        refs: &[SecretRef],
    ) -> Result<Option<Arc<HashSet<NodeId>>>, StoreError> {
        let mut all: Option<Arc<HashSet<NodeId>>> = None;
        for r in refs {
            let held = self.of(app, project, r).await?;
            all = Some(match all {
                None => held,
                Some(a) => Arc::new(a.intersection(&held).cloned().collect()),
            });
        }
        Ok(all)
    }
}

/// The copies of `refs` sealed to `node`, each at the version it resolves
/// to now. A secret the node holds no copy of goes with an empty copy: a
/// new placement with one is not made (see `dispatch::pass`); an assignment
/// sent again on a reconnect carries it, and the agent fails the attempt
/// naming the secret (a delete raced the placement).
pub(super) async fn sealed_for(
    app: &App,
    project: &ProjectId,
    node: &NodeId,
    refs: &[SecretRef],
) -> Result<Vec<SealedSecret>, StoreError> {
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let version = match r.version {
            0 => app.store.secret_get(project, &r.name, None).await?.map_or(0, |v| v.version),
            v => v,
        };
        let copy = match version {
            0 => None,
            v => app.store.secret_copy(project, &r.name, v, node).await?,
        };
        let (enc, ciphertext) = copy.map(|c| (c.enc, c.ciphertext)).unwrap_or_default();
        out.push(SealedSecret { reference: r.clone(), project_id: project.to_string(), version, enc, ciphertext });
    }
    Ok(out)
}

/// A holder's answer to a reseal request: the copy is stored when the
/// holder holds the version itself, the target is still a recipient of the
/// project with the key the copy was sealed to, and the copy is shaped like
/// one. Anything else is logged and dropped (the reseal task asks again).
pub(super) async fn resealed(app: &App, fx: &mut Effects<'_>, holder: &NodeId, r: &Resealed) -> Result<(), StoreError> {
    let refused = |why: &str| {
        tracing::warn!(node_id = %holder, secret = r.name, version = r.version, target = r.target_node, why, "reseal answer dropped");
        Ok(())
    };
    if !r.error.is_empty() {
        return refused(&r.error);
    }
    let (Ok(project), Ok(target)) = (ProjectId::parse(&r.project_id), NodeId::parse(&r.target_node)) else {
        return refused("bad ids");
    };
    if r.enc.len() != tether_auth::seal::KEY_LEN || r.ciphertext.len() > MAX_SECRET_BYTES + 16 {
        return refused("not shaped like a copy");
    }
    if app.store.secret_copy(&project, &r.name, r.version, holder).await?.is_none() {
        return refused("the node answering holds no copy itself");
    }
    let Some(access) = app.auth.tenants.get().access.get(&project).cloned() else {
        return refused("the project is gone");
    };
    let recipient = crate::services::secrets::recipient(app, &access, &target).await?;
    if recipient.is_none_or(|x| x.public_key != r.target_public_key) {
        return refused("the target is not a recipient with that key");
    }
    let copy = SecretCopy {
        node_id: target.clone(),
        public_key: r.target_public_key.clone(),
        enc: r.enc.clone(),
        ciphertext: r.ciphertext.clone(),
    };
    if fx.commit(app.store.secret_copy_add(&project, &r.name, r.version, &copy, now_ms()).await?) {
        tracing::info!(secret = r.name, version = r.version, from = %holder, to = %target, "secret resealed for a node");
        // Work that waits for a holder may place now.
        fx.wake(Signal::Placement);
    }
    Ok(())
}
