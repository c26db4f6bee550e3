//! Group commit: callers hand in one item each and wait for its answer; one
//! task takes everything that has queued up meanwhile (up to a limit) and
//! handles the lot in one call, typically one database transaction.
//!
//! Under light load a batch is one item and costs what a direct call costs;
//! under a burst (thousands of agents reconnecting at once) the transaction
//! count drops by the batch size.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Batcher<I, O> {
    tx: mpsc::Sender<(I, oneshot::Sender<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the task on `tasks`. `handle` gets up to `max` items and must
    /// answer each, in order. At most `4 * max` items wait; more callers wait
    /// to queue. When `shutdown` fires the task finishes the batch in hand
    /// and stops: items still queued are answered with nothing (their
    /// callers see the control plane shutting down; nothing of theirs was
    /// written).
    pub fn spawn<F, Fut>(max: usize, tasks: &TaskTracker, shutdown: CancellationToken, mut handle: F) -> Self
    where
        F: FnMut(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<O>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<(I, oneshot::Sender<O>)>(4 * max.max(1));
        tasks.spawn(async move {
            loop {
                let first = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    first = rx.recv() => match first {
                        Some(first) => first,
                        None => break,
                    },
                };
                let mut items = vec![first];
                while items.len() < max {
                    match rx.try_recv() {
                        Ok(x) => items.push(x),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) = items.into_iter().unzip();
                metrics::histogram!("tether_group_commit_batch_size").record(items.len() as f64);
                let answers = handle(items).await;
                debug_assert_eq!(answers.len(), replies.len(), "one answer per item");
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
        });
        Batcher { tx }
    }

    /// Queues the item and waits for its answer; None if the batcher's task
    /// is gone or did not answer this item.
    pub async fn call(&self, item: I) -> Option<O> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((item, tx)).await.ok()?;
        rx.await.ok()
    }
}

/// Spreads a batch's outcome over its callers: each its own answer, or the
/// batch's database error (logged once, here) to every one of them.
pub fn answers<T>(
    n: usize,
    what: &str,
    result: Result<Vec<T>, tether_store::StoreError>,
) -> Vec<Result<T, tether_types::Error>> {
    match result {
        Ok(out) => out.into_iter().map(Ok).collect(),
        Err(e) => {
            tracing::error!(error = &e as &dyn std::error::Error, items = n, "{what} failed");
            let e = tether_types::Error::from(e);
            (0..n).map(|_| Err(e.clone())).collect()
        }
    }
}

/// [`answers`] for a batch whose transaction appended events: each caller
/// is answered with the batch's highest sequence number, which covers its
/// own events.
pub fn committed_answers<T>(
    n: usize,
    what: &str,
    result: Result<tether_store::Committed<Vec<T>>, tether_store::StoreError>,
) -> Vec<Result<tether_store::Committed<T>, tether_types::Error>> {
    match result {
        Ok(c) => {
            let seq = c.seq;
            answers(n, what, Ok(c.value.into_iter().map(|value| tether_store::Committed { value, seq }).collect()))
        }
        Err(e) => answers(n, what, Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn answers_each_caller_and_batches_what_queued_up() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let b = Arc::new(Batcher::spawn(64, &tasks, shutdown.clone(), move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::task::yield_now().await;
                items.into_iter().map(|i| i * 2).collect::<Vec<_>>()
            }
        }));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..500u32 {
            let b = b.clone();
            set.spawn(async move { (i, b.call(i).await) });
        }
        while let Some(r) = set.join_next().await {
            let (i, answer) = r.unwrap();
            assert_eq!(answer, Some(i * 2));
        }
        let n = calls.load(Ordering::Relaxed);
        assert!(n >= 500 / 64, "at most 64 per batch: {n} calls");
        assert!(n < 500, "500 callers at once were batched: {n} calls");

        // Shutdown: the task stops (it is tracked), later calls get nothing.
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        assert_eq!(b.call(1).await, None);
    }
}
