//! Server-streaming responses fed from a channel.
//!
//! Items travel boxed: a tokio channel allocates its slots 32 at a time when
//! it is created, and a `Result<Message, Status>` is a couple of hundred
//! bytes, so an unboxed channel cost every connected agent several KiB before
//! it sent anything. Boxed, a slot is one pointer.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The receiving end has gone (the client disconnected).
#[derive(Debug)]
pub struct Closed;

/// Why [`StreamTx::try_send`] did not queue an item.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    Full,
    Closed,
}

pub struct StreamTx<T>(mpsc::Sender<Box<Result<T, Status>>>);

impl<T> Clone for StreamTx<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> StreamTx<T> {
    /// Waits for room, then queues the item.
    pub async fn send(&self, item: Result<T, Status>) -> Result<(), Closed> {
        self.0.send(Box::new(item)).await.map_err(|_| Closed)
    }

    /// Resolves once the receiving end has gone.
    pub async fn closed(&self) {
        self.0.closed().await
    }

    pub fn try_send(&self, item: Result<T, Status>) -> Result<(), TrySendError> {
        self.0.try_send(Box::new(item)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TrySendError::Full,
            mpsc::error::TrySendError::Closed(_) => TrySendError::Closed,
        })
    }
}

/// A bounded channel whose receiving end is a response stream.
pub fn channel<T: Send + 'static>(capacity: usize) -> (StreamTx<T>, BoxStream<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    (StreamTx(tx), Box::pin(ReceiverStream::new(rx).map(|item: Box<Result<T, Status>>| *item)))
}

/// Ends an operator's stream that has carried nothing for `idle`, with
/// DEADLINE_EXCEEDED: a watcher that went quiet does not hold a task and a
/// connection forever. Clients resume (a watch from its last sequence).
pub fn idle_limited<T: Send + 'static>(inner: BoxStream<T>, idle: std::time::Duration) -> BoxStream<T> {
    Box::pin(tokio_stream::wrappers::ReceiverStream::new({
        let (tx, rx) = mpsc::channel::<Result<T, Status>>(1);
        tokio::spawn(async move {
            let mut inner = inner;
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    next = tokio::time::timeout(idle, inner.next()) => match next {
                        Ok(Some(item)) => {
                            if tx.send(item).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(_) => {
                            let why = format!("no message for {idle:?}: the stream is closed; open it again (a watch resumes from its last sequence)");
                            let _ = tx.send(Err(Status::deadline_exceeded(why))).await;
                            return;
                        }
                    },
                }
            }
        });
        rx
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_and_full_is_reported() {
        let (tx, mut rx) = channel::<u32>(2);
        tx.send(Ok(1)).await.unwrap();
        tx.try_send(Err(Status::aborted("x"))).unwrap();
        assert_eq!(tx.try_send(Ok(3)), Err(TrySendError::Full));
        assert_eq!(rx.next().await.unwrap().unwrap(), 1);
        assert_eq!(rx.next().await.unwrap().unwrap_err().code(), tonic::Code::Aborted);
        drop(rx);
        assert!(tx.send(Ok(4)).await.is_err());
        assert_eq!(tx.try_send(Ok(5)), Err(TrySendError::Closed));
    }
}
