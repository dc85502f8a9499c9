//! Projections: read models kept from the event store, each update applied exactly once.
//!
//! A [`Projection`] turns events into document changes ([`View::put`], [`View::delete`]). A
//! [`ProjectionRunner`] feeds it the store's global log from its checkpoint, filtered, in batches,
//! and commits each batch's changes **with** the new checkpoint in one atomic write
//! ([`ReadModelStore::commit`], a compare-and-set on the checkpoint): an event is applied to the read
//! model once, whatever crashes or how many workers run it. A projection that fails on an event
//! stops there and retries (a read model with a hole in it would be wrong forever); its status says
//! why.
//!
//! - **Catch-up and live** are the same read of the log (see [`crate::subscription`]).
//! - **Worker groups:** workers of one projection (threads or processes) take a lease on it; one
//!   runs it at a time, another takes over when its lease lapses. Several projections per process
//!   share the load by running one runner each.
//! - **Rebuild without downtime:** [`ProjectionRunner::rebuild`] builds a shadow copy from position 0
//!   while the live one keeps serving, catches it up to the live copy, then swaps it in atomically;
//!   the live runner notices (its next commit's compare-and-set fails) and continues from the
//!   rebuilt checkpoint.
//! - **Read-your-writes:** a command's result carries the global position of what it stored;
//!   [`ProjectionReader::wait_for`] waits until the projection has passed it (the log has no gaps, so
//!   every earlier event, of any writer, is in).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use composable_rust_core::{
    Checkpoint, Clock, DocChange, EventFilter, EventStore, EventStoreError, FilteredPage, GlobalPosition, ReadModelError, ReadModelStore, RecordedEvent,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::clock::SystemClock;

/// A read model kept from events.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Name: where its documents and checkpoint are stored.
    const NAME: &'static str;

    /// Which events it reads (applied in the store: the others are never loaded).
    fn filter(&self) -> EventFilter;

    /// Applies one event to the read model. Reads see the changes of the same batch.
    async fn apply(&self, event: &RecordedEvent, view: &mut View<'_>) -> Result<(), ProjectionError>;
}

/// Why a projection could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// An event could not be applied (its payload, a document it needs).
    #[error("projection {projection}: event at {position:?} ({event_type}) cannot be applied: {reason}")]
    Event {
        /// The projection.
        projection: String,
        /// The event's position.
        position: GlobalPosition,
        /// Its type.
        event_type: String,
        /// Why.
        reason: String,
    },
    /// A document could not be encoded or decoded (JSON).
    #[error("projection {projection}: document {key}: {source}")]
    Document {
        /// The projection.
        projection: String,
        /// The key.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The read-model store failed.
    #[error(transparent)]
    ReadModel(#[from] ReadModelError),
    /// The event store failed.
    #[error("reading the log: {0}")]
    Store(#[from] EventStoreError),
}

impl ProjectionError {
    /// A failure to apply `event`, for [`Projection::apply`] implementations.
    pub fn event(projection: &str, event: &RecordedEvent, reason: impl std::fmt::Display) -> Self {
        ProjectionError::Event {
            projection: projection.into(),
            position: event.position,
            event_type: event.event.event_type.clone(),
            reason: reason.to_string(),
        }
    }

    /// Whether retrying later may succeed (a store that is down).
    pub fn is_retryable(&self) -> bool {
        match self {
            ProjectionError::ReadModel(e) => e.is_retryable(),
            ProjectionError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// The read model as one batch sees it: stored documents plus the batch's own changes, which
/// [`ProjectionRunner`] commits with the checkpoint. Documents are JSON.
pub struct View<'a> {
    models: &'a dyn ReadModelStore,
    projection: &'a str,
    pending: HashMap<String, Option<Bytes>>,
    changes: Vec<DocChange>,
}

impl<'a> View<'a> {
    fn new(models: &'a dyn ReadModelStore, projection: &'a str) -> Self {
        Self { models, projection, pending: HashMap::new(), changes: Vec::new() }
    }

    /// The document at `key`, if any.
    pub async fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, ProjectionError> {
        let bytes = match self.pending.get(key) {
            Some(v) => v.clone(),
            None => self.models.get(self.projection, key).await?,
        };
        bytes.map(|b| serde_json::from_slice(&b).map_err(|source| self.doc_error(key, source))).transpose()
    }

    /// Sets the document at `key`.
    pub fn put<T: Serialize>(&mut self, key: &str, doc: &T) -> Result<(), ProjectionError> {
        let value = Bytes::from(serde_json::to_vec(doc).map_err(|source| self.doc_error(key, source))?);
        self.pending.insert(key.to_string(), Some(value.clone()));
        self.changes.push(DocChange::Put { key: key.to_string(), value });
        Ok(())
    }

    /// Deletes the document at `key`.
    pub fn delete(&mut self, key: &str) {
        self.pending.insert(key.to_string(), None);
        self.changes.push(DocChange::Delete { key: key.to_string() });
    }

    /// Reads the document at `key` (or its default), lets `f` change it, and puts it back.
    pub async fn update<T: DeserializeOwned + Serialize + Default>(&mut self, key: &str, f: impl FnOnce(&mut T)) -> Result<(), ProjectionError> {
        let mut doc: T = self.get(key).await?.unwrap_or_default();
        f(&mut doc);
        self.put(key, &doc)
    }

    fn doc_error(&self, key: &str, source: serde_json::Error) -> ProjectionError {
        ProjectionError::Document { projection: self.projection.to_string(), key: key.to_string(), source }
    }
}

/// Reads a projection's documents and waits for it: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct ProjectionReader<D = serde_json::Value> {
    models: Arc<dyn ReadModelStore>,
    events: Arc<dyn EventStore>,
    name: String,
    progress: watch::Receiver<GlobalPosition>,
    _doc: PhantomData<fn() -> D>,
}

/// The projection did not reach a position in time.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// Timed out: the projection is at `reached`.
    #[error(
        "projection {projection} did not reach position {wanted:?} within {timeout:?} (it is at {reached:?}); it may be lagging or stopped: check its status"
    )]
    TimedOut {
        /// The projection.
        projection: String,
        /// The position waited for.
        wanted: GlobalPosition,
        /// Where it is.
        reached: GlobalPosition,
        /// How long it waited.
        timeout: Duration,
    },
    /// Reading the checkpoint failed.
    #[error(transparent)]
    ReadModel(#[from] ReadModelError),
}

/// A projection's checkpoint against the store's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// Where the projection is.
    pub checkpoint: Checkpoint,
    /// The store's head.
    pub head: GlobalPosition,
    /// Events between them (an upper bound: filtered events and holes in positions count).
    pub lag_events: u64,
    /// How long the first event after the checkpoint has waited: now minus its timestamp (zero
    /// when caught up).
    pub lag: Duration,
}

impl<D: DeserializeOwned> ProjectionReader<D> {
    /// The document at `key`.
    pub async fn get(&self, key: &str) -> Result<Option<D>, ProjectionError> {
        let Some(bytes) = self.models.get(&self.name, key).await? else { return Ok(None) };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| ProjectionError::Document { projection: self.name.clone(), key: key.into(), source })
    }

    /// Documents whose key starts with `prefix`, in key order.
    pub async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, D)>, ProjectionError> {
        let rows = self.models.list(&self.name, prefix, limit).await?;
        rows.into_iter()
            .map(|(k, v)| match serde_json::from_slice(&v) {
                Ok(d) => Ok((k, d)),
                Err(source) => Err(ProjectionError::Document { projection: self.name.clone(), key: k, source }),
            })
            .collect()
    }
}

impl<D> ProjectionReader<D> {
    /// The projection's name (where its documents live).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the projection has applied everything up to `position` (e.g. a command's
    /// `CommandOutcome::Handled { position }`), at most `timeout` (real time).
    pub async fn wait_for(&self, position: GlobalPosition, timeout: Duration) -> Result<Checkpoint, WaitError> {
        let started = Instant::now();
        let mut progress = self.progress.clone();
        loop {
            let checkpoint = self.models.checkpoint(&self.name).await?;
            if checkpoint.position >= position {
                return Ok(checkpoint);
            }
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(WaitError::TimedOut { projection: self.name.clone(), wanted: position, reached: checkpoint.position, timeout });
            }
            // Woken by this process's runner; another process's is seen on the next look.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(10)), progress.changed()).await;
        }
    }

    /// Where the projection stands against the store's head.
    pub async fn status(&self) -> Result<ProjectionStatus, ProjectionError> {
        let checkpoint = self.models.checkpoint(&self.name).await?;
        let head = self.events.head().await?;
        let lag_events = head.0.saturating_sub(checkpoint.position.0);
        let lag = crate::subscription::time_lag(&*self.events, checkpoint.position, head).await?;
        crate::metrics::LagGauges::projection(&self.name).set(lag_events, lag);
        Ok(ProjectionStatus { checkpoint, head, lag_events, lag })
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    /// Events applied.
    pub applied: usize,
    /// The checkpoint after the batch (unchanged when there was nothing new or another worker
    /// committed first).
    pub checkpoint: GlobalPosition,
    /// Whether the log was read past the previous checkpoint.
    pub moved: bool,
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events applied to the shadow copy.
    pub applied: u64,
    /// The checkpoint swapped in.
    pub checkpoint: GlobalPosition,
    /// How long it took.
    pub elapsed: Duration,
}

/// Runs one projection (see the module docs).
pub struct ProjectionRunner<P: Projection> {
    inner: Arc<RunnerInner<P>>,
}

struct RunnerInner<P> {
    projection: Arc<P>,
    events: Arc<dyn EventStore>,
    models: Arc<dyn ReadModelStore>,
    name: String,
    batch: usize,
    poll: Duration,
    lease: Duration,
    worker: String,
    clock: Arc<dyn Clock>,
    progress: watch::Sender<GlobalPosition>,
}

impl<P: Projection> ProjectionRunner<P> {
    /// A runner of `projection` over `events`, keeping its documents in `models` (usually the same
    /// store: every store is also a [`ReadModelStore`]).
    pub fn new(projection: P, events: Arc<dyn EventStore>, models: Arc<dyn ReadModelStore>) -> Self {
        Self::named(Arc::new(projection), events, models, P::NAME.to_string())
    }

    fn named(projection: Arc<P>, events: Arc<dyn EventStore>, models: Arc<dyn ReadModelStore>, name: String) -> Self {
        Self {
            inner: Arc::new(RunnerInner {
                projection,
                events,
                models,
                name,
                batch: 1000,
                poll: Duration::from_millis(20),
                lease: Duration::from_secs(10),
                worker: uuid::Uuid::new_v4().to_string(),
                clock: Arc::new(SystemClock),
                progress: watch::channel(GlobalPosition(0)).0,
            }),
        }
    }

    fn configure(mut self, f: impl FnOnce(&mut RunnerInner<P>)) -> Self {
        f(Arc::get_mut(&mut self.inner).expect("configure a ProjectionRunner before it runs"));
        self
    }

    /// Events per batch (one commit each; default 1000).
    #[must_use]
    pub fn with_batch(self, n: usize) -> Self {
        self.configure(|i| i.batch = n.max(1))
    }

    /// How long a caught-up worker waits before looking again (default 20 ms), on `clock`.
    #[must_use]
    pub fn with_poll(self, every: Duration, clock: Arc<dyn Clock>) -> Self {
        self.configure(|i| {
            i.poll = every.max(Duration::from_millis(1));
            i.clock = clock;
        })
    }

    /// How long a worker holds the projection before another may take it over (default 10 s).
    #[must_use]
    pub fn with_lease(self, lease: Duration) -> Self {
        self.configure(|i| i.lease = lease.max(Duration::from_millis(10)))
    }

    /// A reader of this projection's documents.
    pub fn reader<D>(&self) -> ProjectionReader<D> {
        ProjectionReader {
            models: Arc::clone(&self.inner.models),
            events: Arc::clone(&self.inner.events),
            name: self.inner.name.clone(),
            progress: self.inner.progress.subscribe(),
            _doc: PhantomData,
        }
    }

    /// Applies one batch after the stored checkpoint and commits it with the new checkpoint.
    pub async fn run_batch(&self) -> Result<BatchReport, ProjectionError> {
        self.inner.run_batch().await
    }

    /// Runs batches until the projection has seen the whole log as it is now; returns the
    /// checkpoint.
    pub async fn catch_up(&self) -> Result<GlobalPosition, ProjectionError> {
        self.inner.catch_up(|_| {}).await.map(|(p, _)| p)
    }

    /// Rebuilds the projection from position 0 into a shadow copy (`{NAME}~rebuild`) while the live
    /// one keeps serving, then swaps the copy in atomically. `progress` is called after each batch
    /// with the shadow's checkpoint and the head it is catching up to.
    pub async fn rebuild(&self, progress: impl Fn(GlobalPosition, GlobalPosition)) -> Result<RebuildReport, ProjectionError> {
        let started = Instant::now();
        let i = &self.inner;
        let shadow = format!("{}~rebuild", i.name);
        i.models.reset(&shadow).await?;
        let builder = ProjectionRunner::named(Arc::clone(&i.projection), Arc::clone(&i.events), Arc::clone(&i.models), shadow.clone()).with_batch(i.batch);
        let head = i.events.head().await?;
        let (mut checkpoint, mut applied) = builder.inner.catch_up(|p| progress(p, head)).await?;
        // The live copy kept moving meanwhile: catch the shadow up to it before the swap, so that
        // readers do not see the model step back (at most by the one batch the live worker may
        // commit in the instant between this check and the swap; it is re-applied at once).
        for _ in 0..16 {
            let live = i.models.checkpoint(&i.name).await?.position;
            if checkpoint >= live {
                break;
            }
            let (c, a) = builder.inner.catch_up(|p| progress(p, live)).await?;
            checkpoint = c;
            applied += a;
        }
        i.models.swap(&i.name, &shadow).await?;
        tracing::info!(projection = %i.name, applied, ?checkpoint, "projection rebuilt and swapped in");
        i.progress.send_replace(checkpoint);
        Ok(RebuildReport { applied, checkpoint, elapsed: started.elapsed() })
    }

    /// Runs the projection in the background: takes the lease, applies batches as events arrive,
    /// retries failures with backoff.
    pub fn spawn(self) -> ProjectionHandle {
        let (stop, mut stopped) = watch::channel(false);
        let inner = Arc::clone(&self.inner);
        let span = tracing::info_span!("projection", name = %inner.name);
        // Refreshes the lag gauges (`crate::metrics::PROJECTION_LAG_*`) at most once a second.
        let lag_reader: ProjectionReader = self.reader();
        let task = tokio::spawn(
            async move {
                let mut backoff = inner.poll;
                let mut lag_reported: Option<chrono::DateTime<chrono::Utc>> = None;
                loop {
                    let now = inner.clock.now();
                    if lag_reported.is_none_or(|at| now - at >= chrono::TimeDelta::seconds(1)) {
                        lag_reported = Some(now);
                        if let Err(e) = lag_reader.status().await {
                            tracing::debug!(error = %e, "could not compute the projection's lag");
                        }
                    }
                    let idle = match inner.step().await {
                        Ok(moved) => {
                            backoff = inner.poll;
                            !moved
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?backoff, "projection stopped on an error; retrying");
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            true
                        }
                    };
                    if idle {
                        tokio::select! {
                            _ = stopped.wait_for(|s| *s) => break,
                            () = inner.clock.sleep(backoff) => {}
                        }
                    } else if *stopped.borrow() {
                        break;
                    }
                }
            }
            .instrument(span),
        );
        ProjectionHandle { stop, task, reader: self.reader() }
    }
}

impl<P: Projection> RunnerInner<P> {
    async fn run_batch(&self) -> Result<BatchReport, ProjectionError> {
        let from = self.models.checkpoint(&self.name).await?.position;
        self.run_batch_from(from).await
    }

    /// One batch from `from`, the checkpoint as last read or committed (a stale one only costs a
    /// dropped batch: the commit's compare-and-set refuses it).
    async fn run_batch_from(&self, from: GlobalPosition) -> Result<BatchReport, ProjectionError> {
        let page = self.events.read_all_filtered(from, self.batch, &self.projection.filter()).await?;
        if page.scanned_to <= from {
            return Ok(BatchReport { applied: 0, checkpoint: from, moved: false });
        }
        let changes = self.apply(&page).await?;
        self.commit(from, &page, changes).await
    }

    /// The read-model changes of applying `page`'s events in order.
    async fn apply(&self, page: &FilteredPage) -> Result<Vec<DocChange>, ProjectionError> {
        let mut view = View::new(&*self.models, &self.name);
        for event in &page.events {
            self.projection.apply(event, &mut view).await?;
        }
        Ok(view.changes)
    }

    /// Commits `changes` with the checkpoint moving from `from` to the end of `page`.
    async fn commit(&self, from: GlobalPosition, page: &FilteredPage, changes: Vec<DocChange>) -> Result<BatchReport, ProjectionError> {
        match self.models.commit(&self.name, from, page.scanned_to, changes).await {
            Ok(()) => {
                self.progress.send_replace(page.scanned_to);
                Ok(BatchReport { applied: page.events.len(), checkpoint: page.scanned_to, moved: true })
            }
            Err(ReadModelError::CheckpointMoved { actual, .. }) => {
                // Another worker, or a rebuild swapped in: their commit stands, ours is dropped.
                tracing::debug!(?actual, "checkpoint moved meanwhile; batch dropped, continuing from the stored checkpoint");
                Ok(BatchReport { applied: 0, checkpoint: actual, moved: true })
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn catch_up(&self, progress: impl Fn(GlobalPosition)) -> Result<(GlobalPosition, u64), ProjectionError> {
        let filter = self.projection.filter();
        let mut applied = 0;
        let mut from = self.models.checkpoint(&self.name).await?.position;
        let mut page = self.events.read_all_filtered(from, self.batch, &filter).await?;
        while page.scanned_to > from {
            let changes = self.apply(&page).await?;
            // The next page is read while this one commits (the commit is a write transaction,
            // the read needs none of it): the replay runs at the speed of the slower of the two.
            let (report, next) = tokio::join!(self.commit(from, &page, changes), self.events.read_all_filtered(page.scanned_to, self.batch, &filter));
            let report = report?;
            applied += report.applied as u64;
            progress(report.checkpoint);
            page = if report.checkpoint == page.scanned_to {
                next?
            } else {
                // Dropped: someone else's commit stands; the page read ahead starts elsewhere.
                self.events.read_all_filtered(report.checkpoint, self.batch, &filter).await?
            };
            from = report.checkpoint;
        }
        Ok((from, applied))
    }

    /// One iteration of a spawned worker: a batch if this worker holds the lease. Whether it moved.
    async fn step(&self) -> Result<bool, ProjectionError> {
        if !self.models.try_lease(&self.name, &self.worker, self.clock.now(), self.lease).await? {
            return Ok(false);
        }
        Ok(self.run_batch().await?.moved)
    }
}

/// Controls a spawned projection worker.
pub struct ProjectionHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    reader: ProjectionReader,
}

impl ProjectionHandle {
    /// A reader of the projection (documents as JSON values; use [`ProjectionRunner::reader`] for
    /// typed documents).
    pub fn reader(&self) -> &ProjectionReader {
        &self.reader
    }

    /// Stops after the batch in hand and waits.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "projection task failed");
        }
    }
}
