//! The database health probe: what `/readyz` answers, kept fresh in the
//! background so that readiness never waits on the database.

use std::time::Duration;

use tether_store::{DbHealth, Store};
use tokio_util::sync::CancellationToken;

/// How often the database is probed.
pub const PROBE_PERIOD: Duration = Duration::from_millis(500);

pub async fn probe_loop(store: Store, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                let h = store.probe().await;
                metrics::gauge!("tether_database_up").set(if h == DbHealth::Unreachable { 0.0 } else { 1.0 });
                metrics::gauge!("tether_database_writable").set(if h == DbHealth::Ok { 1.0 } else { 0.0 });
            }
        }
    }
}
