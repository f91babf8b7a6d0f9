//! Group commit for new operations. Every `CreateOperation` is one
//! transaction, and on SQLite each commit is a synced write of the one
//! writer: created one by one, a fleet-wide operation is bound by commits,
//! not by work. Callers submit and wait; one task takes whatever queued
//! while the previous transaction committed (no fixed wait, so an idle
//! server commits at once) and records it in one transaction, each
//! operation all or nothing on its own. A caller is answered only after
//! its operation (and its audit entry) committed.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::clock;
use crate::domain::OperationRecord;
use crate::store::{NewOperation, Store, StoreError};

/// Most operations per transaction.
const MAX_BATCH: usize = 512;
/// Most submissions queued before submitters wait.
const QUEUE: usize = 4_096;

/// Why an operation was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("the operation writer has stopped")]
    Closed,
    #[error("recording the operation")]
    Store(#[source] StoreError),
}

struct Submission {
    new: NewOperation,
    done: oneshot::Sender<Result<OperationRecord, StoreError>>,
}

/// A handle for recording operations. Cheap to clone.
#[derive(Clone)]
pub struct Creator {
    tx: mpsc::Sender<Submission>,
}

impl Creator {
    /// Starts the writing task. It ends when every `Creator` is dropped.
    pub fn spawn<S: Store>(store: S) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, tokio::spawn(run(store, rx)))
    }

    /// Records `new` (in a transaction it may share with others) and
    /// returns it as stored — or the operation it merged into.
    pub async fn create(&self, new: NewOperation) -> Result<OperationRecord, CreateError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Submission { new, done })
            .await
            .map_err(|_| CreateError::Closed)?;
        answer
            .await
            .map_err(|_| CreateError::Closed)?
            .map_err(CreateError::Store)
    }
}

async fn run<S: Store>(store: S, mut rx: mpsc::Receiver<Submission>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let batch_now = std::mem::take(&mut batch);
        commit(&store, batch_now).await;
    }
}

/// One transaction for the batch; if the transaction as a whole fails,
/// each submission is tried alone so each caller gets its own answer.
async fn commit<S: Store>(store: &S, batch: Vec<Submission>) {
    let now = clock::now();
    let new: Vec<NewOperation> = batch.iter().map(|s| s.new.clone()).collect();
    match store.create_operations(&new, now).await {
        Ok(results) => {
            for (s, result) in batch.into_iter().zip(results) {
                let _ = s.done.send(result);
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(s) = batch.into_iter().next() {
                let _ = s.done.send(Err(e));
            }
        }
        Err(_) => {
            for s in batch {
                let result = store
                    .create_operations(std::slice::from_ref(&s.new), now)
                    .await
                    .and_then(|mut r| r.pop().unwrap_or_else(|| Err(missing())));
                let _ = s.done.send(result);
            }
        }
    }
}

fn missing() -> StoreError {
    StoreError::Invalid {
        message: "the store returned no result for an operation".into(),
    }
}
