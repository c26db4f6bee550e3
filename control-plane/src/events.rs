//! The event log as readers see it: an in-memory tail of the newest events,
//! filled by one reader (the `event_tail` background task) from the
//! database, and [`follow`], which serves a watcher from that tail while it
//! keeps up and from the database while it catches up, never rescanning
//! from the start.
//!
//! Events become visible in commit order (the store orders appends), so a
//! reader that has read every event up to sequence N and then asks for
//! `seq > N` never skips one.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use tether_store::{Event, EventQuery, EventScope, Store, StoreError};
use tether_types::Error;
use tokio::sync::watch;
use tonic::Status;

use crate::status::store_status;
use crate::stream::StreamTx;

/// Events kept in memory: about a few MiB.
pub const TAIL_CAPACITY: usize = 4096;
/// Rows per database read.
const PAGE: u32 = 500;

/// The newest events, oldest first. Every committed event with a sequence
/// in `(floor, head]` is in `ring`.
pub struct EventTail {
    state: RwLock<TailState>,
    head: watch::Sender<i64>,
    capacity: usize,
}

struct TailState {
    ring: VecDeque<Arc<Event>>,
    floor: i64,
}

/// What the tail answers for a cursor.
enum Served {
    /// The events after the cursor (perhaps none) and how far they reach.
    Events(Vec<Arc<Event>>, i64),
    /// The cursor is older than the tail: read the database.
    TooOld,
}

impl EventTail {
    /// An empty tail starting at `head` (the log's head when the process started).
    pub fn new(head: i64, capacity: usize) -> Self {
        EventTail {
            state: RwLock::new(TailState { ring: VecDeque::new(), floor: head }),
            head: watch::Sender::new(head),
            capacity: capacity.max(1),
        }
    }

    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// Reads what was committed after the tail's head, until caught up.
    /// Returns how many events it added.
    pub async fn fill(&self, store: &Store) -> Result<usize, StoreError> {
        let mut added = 0;
        loop {
            let after = self.head();
            let page = store.events_query(&EventQuery::new(EventScope::All, after), PAGE).await?;
            let Some(last) = page.last().map(|e| e.seq) else { return Ok(added) };
            added += page.len();
            self.push(page);
            self.head.send_replace(last);
            if added >= self.capacity {
                return Ok(added);
            }
        }
    }

    /// Appends events read in sequence order, dropping the oldest past
    /// the capacity (the floor rises with them).
    fn push(&self, events: Vec<Event>) {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        st.ring.extend(events.into_iter().map(Arc::new));
        while st.ring.len() > self.capacity {
            if let Some(old) = st.ring.pop_front() {
                st.floor = old.seq;
            }
        }
    }

    fn serve(&self, after: i64, limit: usize) -> Served {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        if after < st.floor {
            return Served::TooOld;
        }
        let start = st.ring.partition_point(|e| e.seq <= after);
        let events: Vec<_> = st.ring.iter().skip(start).take(limit).cloned().collect();
        let reach = match events.last() {
            Some(e) if events.len() == limit => e.seq,
            // Everything the tail holds after the cursor.
            _ => st.ring.back().map_or(st.floor, |e| e.seq).max(after),
        };
        Served::Events(events, reach)
    }
}

/// FAILED_PRECONDITION for a cursor below what retention kept.
pub fn pruned(after: i64, floor: i64, oldest: Option<i64>) -> Status {
    let oldest = oldest.map_or_else(|| "none: the log is empty".to_string(), |s| s.to_string());
    crate::status::status(Error::precondition(format!(
        "events after sequence {after} are no longer held (retention removed up to {floor}); \
         the oldest sequence still held is {oldest}: list from there and watch again"
    )))
}

/// Refuses a resume point that retention has passed.
pub async fn check_resumable(store: &Store, after: i64) -> Result<(), Status> {
    let (floor, oldest) = store.events_bounds().await.map_err(store_status)?;
    if after < floor { Err(pruned(after, floor, oldest)) } else { Ok(()) }
}

/// Sends every event matching `q` after `q.after`, as `to_msg` makes it
/// (None: skip), until the receiver goes or the control plane shuts down.
pub async fn follow<T: Send + 'static>(
    tail: &EventTail,
    store: &Store,
    shutdown: &tokio_util::sync::CancellationToken,
    mut q: EventQuery,
    tx: StreamTx<T>,
    mut to_msg: impl FnMut(&Event) -> Option<T>,
) {
    let mut changed = tail.head.subscribe();
    loop {
        // Seen: a later head wakes the wait below.
        changed.borrow_and_update();
        let (events, reach): (Vec<Arc<Event>>, i64) = match tail.serve(q.after, PAGE as usize) {
            Served::Events(events, reach) => (events, reach),
            Served::TooOld => {
                // Catching up: everything up to the tail's head now is
                // committed, so a short page reaches at least that far.
                let known = tail.head();
                let before = q.after;
                let page = match store.events_query(&q, PAGE).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        return;
                    }
                };
                // Retention may have removed events this page should hold.
                match store.events_bounds().await {
                    Ok((floor, oldest)) if before < floor => {
                        let _ = tx.send(Err(pruned(before, floor, oldest))).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        return;
                    }
                }
                let reach = match page.last() {
                    Some(e) if page.len() == PAGE as usize => e.seq,
                    last => last.map_or(known, |e| e.seq.max(known)),
                };
                (page.into_iter().map(Arc::new).collect(), reach)
            }
        };
        let caught_up = events.is_empty();
        for e in events {
            if e.seq > q.after
                && q.matches(&e)
                && let Some(msg) = to_msg(&e)
                && tx.send(Ok(msg)).await.is_err()
            {
                return;
            }
        }
        q.after = q.after.max(reach);
        if !caught_up && reach < tail.head() {
            continue;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = tx
                    .send(Err(Status::unavailable("control plane is shutting down; resume with since_sequence")))
                    .await;
                return;
            }
            _ = tx.closed() => return,
            r = changed.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64) -> Event {
        Event {
            seq,
            at: seq,
            org_id: None,
            project_id: None,
            kind: "k.x".into(),
            subject: String::new(),
            payload: serde_json::Value::Null,
            actor: None,
        }
    }

    fn tail_with(head: i64, seqs: &[i64], capacity: usize) -> EventTail {
        let t = EventTail::new(head, capacity);
        t.push(seqs.iter().map(|&s| ev(s)).collect());
        t
    }

    fn got(s: Served) -> Option<(Vec<i64>, i64)> {
        match s {
            Served::Events(e, r) => Some((e.iter().map(|e| e.seq).collect(), r)),
            Served::TooOld => None,
        }
    }

    #[test]
    fn tail_serves_from_its_floor_with_gaps() {
        // Started at 10; 11, 13 and 14 committed (12 rolled back); capacity 2
        // dropped 11, so the floor is 11.
        let t = tail_with(10, &[11, 13, 14], 2);
        assert_eq!(got(t.serve(10, 10)), None, "11 is gone: the database answers");
        assert_eq!(got(t.serve(11, 10)), Some((vec![13, 14], 14)));
        assert_eq!(got(t.serve(12, 10)), Some((vec![13, 14], 14)));
        assert_eq!(got(t.serve(13, 1)), Some((vec![14], 14)));
        assert_eq!(got(t.serve(14, 10)), Some((vec![], 14)));
        // A cursor past the head (a future sequence) stays where it is.
        assert_eq!(got(t.serve(20, 10)), Some((vec![], 20)));
        // A page that is cut short reaches only its last event.
        assert_eq!(got(t.serve(11, 1)), Some((vec![13], 13)));
        // An empty tail covers its start.
        let t = tail_with(5, &[], 4);
        assert_eq!(got(t.serve(5, 10)), Some((vec![], 5)));
        assert_eq!(got(t.serve(4, 10)), None);
    }
}
