//! Self-fencing: a node that cannot show the control plane it is alive gives
//! its job attempts up before the control plane may declare them lost and
//! run them elsewhere.
//!
//! The control plane declares a node's work lost once no beat has arrived
//! for its down timeout, counted from the arrival of the last beat. The
//! agent counts from the moment it *sent* the newest beat the control plane
//! acknowledged, which is no later than that arrival, and gives up after
//! `fence_after` (shorter than the down timeout, chosen by the control plane).
//! So an attempt is killed here before the control plane can count it lost,
//! whatever the network delays: no (job, attempt) runs past its loss. The
//! deadline carries over reconnects: a node that cannot reconnect at all
//! fences just the same.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::runner::Runner;

/// Beats remembered while they wait for their acknowledgement.
const UNACKED_KEPT: usize = 256;
/// How often the watchdog looks when there is no deadline.
const IDLE_CHECK: Duration = Duration::from_millis(250);

pub struct Fence {
    inner: Mutex<Inner>,
}

struct Inner {
    after: Option<Duration>,
    /// (seq, sent at) of beats not acknowledged yet, oldest first.
    sent: VecDeque<(u64, Instant)>,
    /// When the newest acknowledged beat was sent.
    acked_sent_at: Instant,
    /// The round trip of the newest beat acknowledged since the last
    /// [`Fence::take_rtt`].
    rtt: Option<Duration>,
}

impl Fence {
    pub fn new() -> Fence {
        Fence {
            inner: Mutex::new(Inner { after: None, sent: VecDeque::new(), acked_sent_at: Instant::now(), rtt: None }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The control plane's `fence_after` (None: never fence).
    pub fn set_after(&self, after: Option<Duration>) {
        self.lock().after = after;
    }

    pub fn sent(&self, seq: u64) {
        let mut i = self.lock();
        if i.sent.len() == UNACKED_KEPT {
            i.sent.pop_front();
        }
        i.sent.push_back((seq, Instant::now()));
    }

    /// The control plane counted beat `seq`.
    pub fn acked(&self, seq: u64) {
        let mut i = self.lock();
        while let Some(&(s, at)) = i.sent.front() {
            if s > seq {
                break;
            }
            i.sent.pop_front();
            if s == seq {
                i.rtt = Some(at.elapsed());
                if at > i.acked_sent_at {
                    i.acked_sent_at = at;
                }
            }
        }
    }

    /// The round trip of the newest beat acknowledged since the last call,
    /// for the next beat to report.
    pub fn take_rtt(&self) -> Option<Duration> {
        self.lock().rtt.take()
    }

    /// When running job attempts must be given up, if no newer beat is
    /// acknowledged before then.
    pub fn deadline(&self) -> Option<Instant> {
        let i = self.lock();
        i.after.map(|a| i.acked_sent_at + a)
    }
}

/// Watches the deadline and gives up running job attempts when it passes.
pub async fn watchdog(fence: Arc<Fence>, runner: Runner, shutdown: CancellationToken) {
    loop {
        let wake = fence.deadline().filter(|d| *d > Instant::now()).unwrap_or_else(|| Instant::now() + IDLE_CHECK);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake.min(Instant::now() + IDLE_CHECK)) => {}
        }
        if let Some(d) = fence.deadline()
            && Instant::now() >= d
            && runner.running_jobs() > 0
        {
            let after = fence.lock().after.unwrap_or_default();
            let why = format!(
                "no beat acknowledged by the control plane for {after:?}: given up before it could be declared lost"
            );
            let n = runner.fence(&why);
            tracing::warn!(attempts = n, "lost contact with the control plane; gave up running job attempts");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadline_counts_from_the_send_time_of_the_newest_acknowledged_beat() {
        let f = Fence::new();
        assert_eq!(f.deadline(), None, "no fencing before the control plane sets it");
        f.set_after(Some(Duration::from_secs(5)));
        let start = Instant::now();
        f.sent(1);
        tokio::time::advance(Duration::from_secs(1)).await;
        f.sent(2);
        tokio::time::advance(Duration::from_secs(3)).await;
        // Beat 1's ack arrives late: the deadline counts from when beat 1 left.
        f.acked(1);
        assert_eq!(f.deadline(), Some(start + Duration::from_secs(5)));
        assert_eq!(f.take_rtt(), Some(Duration::from_secs(4)), "sent at 0, acknowledged at 4");
        assert_eq!(f.take_rtt(), None, "reported once");
        f.acked(2);
        assert_eq!(f.take_rtt(), Some(Duration::from_secs(3)));
        assert_eq!(f.deadline(), Some(start + Duration::from_secs(6)));
        // A stale or unknown ack never moves it back or forward.
        f.acked(1);
        f.acked(99);
        assert_eq!(f.deadline(), Some(start + Duration::from_secs(6)));
        // Unacknowledged beats do not move it.
        tokio::time::advance(Duration::from_secs(10)).await;
        f.sent(3);
        assert_eq!(f.deadline(), Some(start + Duration::from_secs(6)));
    }
}
