//! Open Jobs streams by node: how assignments and cancellations reach agents.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::stream::TrySendError;
use tether_proto::agent_pb;
use tether_types::{Command, NodeId};
use tokio_util::sync::CancellationToken;

pub type JobsTx = crate::stream::StreamTx<agent_pb::JobsResponse>;

/// Room per stream. A stream that falls this far behind is closed; the agent
/// reconnects and its allocation report brings both sides back in line.
pub const STREAM_BUFFER: usize = 1024;

struct Entry {
    id: u64,
    tx: JobsTx,
    cancel: CancellationToken,
}

#[derive(Default)]
pub struct JobsHub {
    streams: Mutex<HashMap<NodeId, Entry>>,
    next: AtomicU64,
}

impl JobsHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Entry>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the node's new Jobs stream, closing an older one.
    pub fn register(&self, node: &NodeId, tx: JobsTx, cancel: CancellationToken) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = self.lock().insert(node.clone(), Entry { id, tx, cancel }) {
            old.cancel.cancel();
        }
        id
    }

    /// Whether the node has a Jobs stream here.
    pub fn has(&self, node: &NodeId) -> bool {
        self.lock().contains_key(node)
    }

    pub fn unregister(&self, node: &NodeId, id: u64) {
        let mut map = self.lock();
        if map.get(node).is_some_and(|e| e.id == id) {
            map.remove(node);
        }
    }

    /// Sends to the node's stream if it has one here. False when it has none
    /// or the stream is too far behind (then it is closed).
    pub fn send(&self, node: &NodeId, cmd: Command) -> bool {
        let map = self.lock();
        let Some(e) = map.get(node) else { return false };
        match e.tx.try_send(Ok(cmd.to_pb())) {
            Ok(()) => true,
            Err(TrySendError::Full) => {
                tracing::warn!(node_id = %node, "jobs stream is too far behind; closing it to resync");
                e.cancel.cancel();
                false
            }
            Err(TrySendError::Closed) => false,
        }
    }
}
