//! Wakes event-log tailers (WatchNodes) when this replica commits events.

use tokio::sync::watch;

/// The highest event sequence this replica knows to be committed.
#[derive(Clone)]
pub struct Notifier {
    tx: watch::Sender<i64>,
    /// Wakes the event tail reader.
    wake: std::sync::Arc<tokio::sync::Notify>,
}

impl Notifier {
    pub fn new(head: i64) -> Self {
        Notifier { tx: watch::Sender::new(head), wake: Default::default() }
    }

    /// Records that events up to `seq` are committed.
    pub fn committed(&self, seq: i64) {
        let grew = self.tx.send_if_modified(|cur| {
            if seq > *cur {
                *cur = seq;
                true
            } else {
                false
            }
        });
        if grew {
            self.wake.notify_one();
        }
    }

    /// Fires after commits: the event tail reader's wake-up.
    pub fn wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// The highest sequence known committed.
    pub fn head(&self) -> i64 {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.tx.subscribe()
    }
}
