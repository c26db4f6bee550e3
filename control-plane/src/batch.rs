//! Group commit: callers hand in one item each and wait for its answer; one
//! task takes everything that has queued up meanwhile (up to a limit) and
//! handles the lot in one call, typically one database transaction.
//!
//! Under light load a batch is one item and costs what a direct call costs;
//! under a burst (thousands of agents reconnecting at once) the transaction
//! count drops by the batch size.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

pub struct Batcher<I, O> {
    tx: mpsc::UnboundedSender<(I, oneshot::Sender<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the task. `handle` gets up to `max` items and must answer each,
    /// in order. The task ends when the batcher is dropped.
    pub fn spawn<F, Fut>(max: usize, mut handle: F) -> Self
    where
        F: FnMut(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<O>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(I, oneshot::Sender<O>)>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
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
        self.tx.send((item, tx)).ok()?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn answers_each_caller_and_batches_what_queued_up() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let b = Arc::new(Batcher::spawn(64, move |items: Vec<u32>| {
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
    }
}
