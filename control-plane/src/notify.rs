//! Wakes event-log tailers (WatchNodes) when this replica commits events.

use tokio::sync::watch;

/// The highest event sequence this replica knows to be committed.
#[derive(Clone)]
pub struct Notifier {
    tx: watch::Sender<i64>,
}

impl Notifier {
    pub fn new(head: i64) -> Self {
        Notifier { tx: watch::Sender::new(head) }
    }

    /// Records that events up to `seq` are committed.
    pub fn committed(&self, seq: i64) {
        self.tx.send_if_modified(|cur| {
            if seq > *cur {
                *cur = seq;
                true
            } else {
                false
            }
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.tx.subscribe()
    }
}
