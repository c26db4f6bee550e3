//! Hands sealed secrets to nodes that lack a copy. For each live version
//! and each recipient of its project without a copy (a node that enrolled
//! after the put, or was granted to the project later), a node that holds
//! the version and has a stream here is asked, over its Jobs stream, to
//! seal the value again for the newcomer's key. The control plane only
//! relays ciphertext; the answer is checked and stored by
//! `dispatch::secrets::resealed`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_types::{Command, NodeId, ProjectId, ResealRequest};

use super::{Activation, ActivationFuture, BackgroundTask};
use crate::app::App;
use crate::services::secrets::{Recipient, recipients_among};

/// A request not answered in this long is asked again (perhaps of
/// another holder).
const ASK_AGAIN: Duration = Duration::from_secs(10);

type Wanted = (ProjectId, String, u32, NodeId);

pub struct Reseal {
    pub app: Arc<App>,
    /// Requests in flight, by what they would produce.
    asked: HashMap<Wanted, Instant>,
}

impl Reseal {
    pub fn new(app: Arc<App>) -> Self {
        Reseal { app, asked: HashMap::new() }
    }

    async fn round(&mut self) -> Result<String, tether_store::StoreError> {
        let app = &self.app;
        let versions = app.store.secret_holders_all().await?;
        self.asked.retain(|_, at| at.elapsed() < ASK_AGAIN);
        if versions.iter().all(|v| v.holders.is_empty()) {
            return Ok(String::new());
        }
        let snap = app.nodes.get(&app.store).await?;
        let keys = app.store.node_sealing_keys().await?;
        let tenants = app.auth.tenants.get();
        let mut by_project: HashMap<ProjectId, Vec<Recipient>> = HashMap::new();
        let (mut asked, mut waiting) = (0usize, 0usize);
        for v in &versions {
            let Some(access) = tenants.access.get(&v.project_id) else { continue };
            let recipients =
                by_project.entry(v.project_id.clone()).or_insert_with(|| recipients_among(&snap, &keys, access));
            // A holder with a stream on this replica answers; any will do.
            let holder = v.holders.iter().find(|h| app.hub.has(h));
            for r in recipients.iter().filter(|r| !v.holders.contains(&r.node)) {
                let wanted = (v.project_id.clone(), v.name.clone(), v.version, r.node.clone());
                if self.asked.contains_key(&wanted) {
                    waiting += 1;
                    continue;
                }
                let Some(holder) = holder else {
                    waiting += 1;
                    continue;
                };
                let Some(copy) = app.store.secret_copy(&v.project_id, &v.name, v.version, holder).await? else {
                    continue;
                };
                let cmd = Command::Reseal(ResealRequest {
                    project_id: v.project_id.to_string(),
                    name: v.name.clone(),
                    version: v.version,
                    enc: copy.enc,
                    ciphertext: copy.ciphertext,
                    target_node: r.node.to_string(),
                    target_public_key: r.public_key.clone(),
                });
                app.effects().send(holder, cmd);
                tracing::debug!(secret = v.name, version = v.version, holder = %holder, target = %r.node, "reseal asked");
                self.asked.insert(wanted, Instant::now());
                asked += 1;
            }
        }
        metrics::counter!("tether_secret_reseals_asked_total").increment(asked as u64);
        Ok(if asked + waiting == 0 { String::new() } else { format!("asked {asked}, waiting {waiting}") })
    }
}

impl BackgroundTask for Reseal {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            match self.round().await {
                Ok(summary) => Activation::Done(summary),
                Err(e) => Activation::Failed(Box::new(e)),
            }
        })
    }
}
