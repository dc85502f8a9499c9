//! Outbox marks written together: concurrent [`mark_published`] calls share one `UPDATE` (one
//! transaction, one WAL flush).
//!
//! Every published event is marked once, so a busy service marks about as often as it appends; one
//! statement per mark made marks a third of the checkout saga's write transactions. A writer task
//! takes the marks queued while its previous statement ran and writes them in one statement, so an
//! idle store still marks at once (a batch of one) and a busy one pays one round trip per batch.
//! Each caller gets the statement's result; a mark is an idempotent update, so a batch that fails
//! can be retried by any of them (and an unmarked entry is only published again by the relay).
//!
//! [`mark_published`]: composable_rust_core::EventStore::mark_published

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use composable_rust_core::{EventStoreError, Topic};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::store::map_err;

/// Marks one statement carries at most (two array parameters; far below any server limit).
const MAX_BATCH: usize = 1024;

type Reply = oneshot::Sender<Result<(), EventStoreError>>;

/// Handle to the mark writer; the task ends when the last handle is dropped.
#[derive(Debug)]
pub(crate) struct MarkBatcher {
    marks: mpsc::UnboundedSender<(Uuid, Topic, Reply)>,
    statements: Arc<AtomicU64>,
}

impl MarkBatcher {
    /// Starts the writer task on the current Tokio runtime.
    pub(crate) fn start(pool: PgPool) -> Self {
        let (marks, receiver) = mpsc::unbounded_channel();
        let statements = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_marks(pool, receiver, Arc::clone(&statements)));
        Self { marks, statements }
    }

    /// Marks `event_id` published to `topic` in the next statement; `None` if the writer is gone
    /// (its runtime shut down): the caller then marks on its own.
    pub(crate) async fn mark(&self, event_id: Uuid, topic: &Topic) -> Option<Result<(), EventStoreError>> {
        let (reply, answer) = oneshot::channel();
        self.marks.send((event_id, topic.clone(), reply)).ok()?;
        answer.await.ok()
    }

    /// Statements written so far.
    pub(crate) fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

async fn write_marks(pool: PgPool, mut receiver: mpsc::UnboundedReceiver<(Uuid, Topic, Reply)>, statements: Arc<AtomicU64>) {
    let mut batch = Vec::new();
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let ids: Vec<String> = batch.iter().map(|(id, _, _)| id.to_string()).collect();
        let topics: Vec<&str> = batch.iter().map(|(_, topic, _)| topic.as_str()).collect();
        let written = sqlx::query(
            "UPDATE composable_rust.outbox AS o SET published_at = now() \
             FROM unnest($1::text[], $2::text[]) AS m(event_id, topic) \
             WHERE o.event_id = m.event_id::uuid AND o.topic = m.topic AND o.published_at IS NULL",
        )
        .bind(&ids)
        .bind(&topics)
        .execute(&pool)
        .await
        .map(|_| ())
        .map_err(map_err);
        statements.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &written {
            tracing::warn!(error = %e, marks = batch.len(), "could not mark outbox entries published");
        }
        for (_, _, reply) in batch.drain(..) {
            let _ = reply.send(written.clone());
        }
    }
}
