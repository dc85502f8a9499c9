//! [`SagaRunner`]: feeds bus deliveries to a [`Saga`], executes its effects, and acknowledges each
//! delivery only after its durable effects succeeded.
//!
//! # Guarantees
//! - **Instances.** Each saga instance (keyed by the id the saga's `decode` returns) lives in the
//!   stream `saga.{NAME}-{instance}`, holding the actions it reduced; any worker rebuilds it by replay.
//! - **Recorded before run.** A step is recorded (appended with the expected version and an inbox
//!   mark for the event) **before** its effects run, under an id derived from the delivered event's
//!   id. A redelivered event is found in the stream and not applied to the state again; its effects
//!   are derived again from the state before the step and executed again (the crash may have
//!   happened before they ran). Every id they use (command ids, ids of events the saga appends or
//!   publishes, follow-up step ids) is derived from the step id and the effect's path, so they land
//!   once however often the step runs.
//! - **Follow-ups.** An action fed back by an effect (an `on_error` compensation, a `Delay` coming
//!   due) is a follow-up step of the same instance, recorded under an id derived from its cause and
//!   the effect's path, with the same rules: a follow-up recorded before a crash has its effects run
//!   again on redelivery.
//! - **What acknowledgement covers.** The effects of a step up to the first *waiting* effect of each
//!   sequence (`Delay`, `Run`, or a composite holding one), and the follow-up steps those fed back.
//!   The waiting effect and everything after it in its sequence run detached: the worker takes the
//!   next delivery at once, and what they feed back is handled as a later follow-up step. In-memory
//!   timers are lost when the process dies; on a redelivery, detached effects are started again only
//!   if no later step of the instance was recorded.
//! - **Cancellation** ids are scoped to the instance: `Effect::cancel("timeout")` in one instance
//!   never touches another's.
//! - **Scheduling.** A worker holds up to `with_max_in_hand` deliveries (64): steps of different
//!   instances run concurrently, steps of one instance strictly in delivery order, each acknowledged
//!   after its own effects (buses that need it, Kafka, commit offsets in partition order only once
//!   every earlier delivery of the partition is acknowledged). A slow step holds back only its own
//!   instance.
//! - Concurrent workers (and detached follow-ups) on one instance are serialised by the append's
//!   expected version: the loser reloads and decides again.
//! - Unknown event types are skipped and acknowledged; undecodable payloads and panics anywhere in
//!   a step (reducer, decoder, initial state) are dead-lettered and acknowledged; retryable failures
//!   are retried in the instance's lane with backoff (so a later step of the instance never
//!   overtakes them) up to `max_deliveries` attempts, then dead-lettered.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use composable_rust_core::deadline::{self, Decision};
use composable_rust_core::event_store::read_stream_to_end;
use composable_rust_core::{
    AppendRequest, ClaimedDeadline, CodecError, DeadlineChange, DeadlineOwner, Effect, EffectPath, EventBusError, EventFilter, EventMetadata, EventStore,
    EventStoreError, ExpectedVersion, ReadModelError, ReadModelStore, Saga, SerializedEvent, StoredDeadline, StreamId, StreamIdError, SubscribeOptions,
    Version, decode_payload, encode_payload,
};
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::kept::{DEFAULT_KEPT, Kept};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use uuid::Uuid;

use crate::dead_letter::dead_letter;
use crate::executor::{EffectFailure, ExecutionScope, Executor, Feedback, panic_message};
use crate::metrics::{Call, SagaCount, SagaMetrics};
use crate::subscription::StoreSubscription;
use crate::tracker::Tracker;

fn feed_filter(feed: &StoreSubscription) -> EventFilter {
    feed.filter().clone()
}

/// Namespace for step ids (UUID v5), so that the same event gives the same step id in every process.
const SAGA_STEP_NAMESPACE: Uuid = Uuid::from_u128(0x6a1c_4a3e_8f7b_4c59_9d0e_52b1_0c7e_a001);

/// Event type of a deadline carried in a dead letter (payload: the encoded action).
pub const DEADLINE_EVENT_TYPE: &str = "SagaDeadline.v1";

/// Event type of the records in a saga instance stream.
pub const SAGA_STEP_EVENT_TYPE: &str = "SagaStep.v1";

/// What handling one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Reduced, recorded, effects executed.
    Applied,
    /// The event had been recorded before (redelivery): state untouched, effects executed again
    /// (idempotently).
    Duplicate,
    /// The saga does not handle this event type.
    Skipped,
}

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The event is of a type the saga handles, but its payload cannot be decoded.
    #[error("saga {saga}: cannot decode event {event_type} {event_id}: {source}")]
    Undecodable {
        /// Saga name.
        saga: &'static str,
        /// Event type.
        event_type: String,
        /// Event id.
        event_id: Uuid,
        /// Why.
        source: CodecError,
    },
    /// The saga returned an instance id that is not a valid stream id.
    #[error("saga {saga}: invalid instance id: {source}")]
    InvalidInstance {
        /// Saga name.
        saga: &'static str,
        /// Why.
        source: StreamIdError,
    },
    /// A recorded step could not be decoded (the action type changed incompatibly).
    #[error("saga {saga}: recorded step {record_id} in {stream} cannot be decoded: {source}; keep old action variants decodable")]
    CorruptRecord {
        /// Saga name.
        saga: &'static str,
        /// Stream.
        stream: StreamId,
        /// Record id.
        record_id: Uuid,
        /// Why.
        source: CodecError,
    },
    /// The event store failed.
    #[error("saga {saga}: {source}")]
    Store {
        /// Saga name.
        saga: &'static str,
        /// The error.
        source: EventStoreError,
    },
    /// An effect of the step failed and the saga did not handle the failure.
    #[error("saga {saga}: effect failed: {source}")]
    Effect {
        /// Saga name.
        saga: &'static str,
        /// The failure.
        source: EffectFailure,
    },
    /// Kept conflicting with other workers on the same instance.
    #[error("saga {saga}: gave up after {attempts} concurrency conflicts on {stream}")]
    TooManyConflicts {
        /// Saga name.
        saga: &'static str,
        /// Stream.
        stream: StreamId,
        /// Attempts.
        attempts: u32,
    },
    /// The saga's reducer panicked (on the step or while replaying the instance).
    #[error("saga {saga}: the reducer panicked: {message}")]
    Panicked {
        /// Saga name.
        saga: &'static str,
        /// The panic message.
        message: String,
    },
    /// The executor has no event store or no bus.
    #[error("saga {saga}: the executor needs {missing}: give it with Executor::builder()")]
    NotConfigured {
        /// Saga name.
        saga: &'static str,
        /// What is missing.
        missing: &'static str,
    },
    /// Subscribing failed.
    #[error("saga {saga}: {source}")]
    Bus {
        /// Saga name.
        saga: &'static str,
        /// The error.
        source: EventBusError,
    },
}

impl SagaError {
    /// Whether redelivering the event later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SagaError::Store { source, .. } => source.is_retryable(),
            SagaError::Effect { source, .. } => source.is_retryable(),
            SagaError::TooManyConflicts { .. } | SagaError::Bus { .. } => true,
            SagaError::Undecodable { .. }
            | SagaError::InvalidInstance { .. }
            | SagaError::CorruptRecord { .. }
            | SagaError::Panicked { .. }
            | SagaError::NotConfigured { .. } => false,
        }
    }
}

/// Counters of a running saga worker.
#[derive(Debug, Default)]
pub struct SagaStats {
    applied: AtomicU64,
    duplicates: AtomicU64,
    skipped: AtomicU64,
    redelivery_requests: AtomicU64,
    dead_lettered: AtomicU64,
    lagged_events: AtomicU64,
    deadlines_fired: AtomicU64,
}

/// A snapshot of [`SagaStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SagaStatsSnapshot {
    /// Steps applied.
    pub applied: u64,
    /// Redeliveries recognised.
    pub duplicates: u64,
    /// Events of types the saga ignores.
    pub skipped: u64,
    /// Deliveries negatively acknowledged for redelivery.
    pub redelivery_requests: u64,
    /// Deliveries dead-lettered.
    pub dead_lettered: u64,
    /// Events the bus reported as missed by this worker.
    pub lagged_events: u64,
    /// Deadlines this worker fed to their instances (the firing step recorded and handled).
    pub deadlines_fired: u64,
}

impl SagaStats {
    /// Current values.
    pub fn snapshot(&self) -> SagaStatsSnapshot {
        SagaStatsSnapshot {
            applied: self.applied.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            redelivery_requests: self.redelivery_requests.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            lagged_events: self.lagged_events.load(Ordering::Relaxed),
            deadlines_fired: self.deadlines_fired.load(Ordering::Relaxed),
        }
    }
}

/// Runs one saga worker. Several workers (in one or many processes) may share the consumer group.
pub struct SagaRunner<S: Saga> {
    inner: Arc<Inner<S>>,
}

struct Inner<S: Saga> {
    saga: S,
    env: S::Environment,
    store: Arc<dyn EventStore>,
    executor: Executor,
    group: String,
    max_attempts: u32,
    max_deliveries: u32,
    max_in_hand: usize,
    deadline_poll: Duration,
    deadline_lease: Duration,
    stats: Arc<SagaStats>,
    /// The same counts as `stats`, for the metrics recorder.
    metrics: SagaMetrics,
    detached: Tracker,
    /// Deadlines claimed by this worker and not handled yet: claimed again (their lease ran out
    /// while they waited in a busy lane) they are not queued a second time.
    deadlines_in_hand: Mutex<std::collections::HashSet<Uuid>>,
    /// Instances kept between steps (see [`SagaRunner::with_cache_capacity`]).
    kept: Kept<KeptInstance<S::State>>,
}

/// A saga instance as a worker keeps it between steps.
struct KeptInstance<S> {
    state: S,
    version: Version,
    /// Ids of the steps recorded in its stream.
    steps: std::collections::HashSet<Uuid>,
}

/// Controls a spawned saga worker.
pub struct SagaRunnerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    stats: Arc<SagaStats>,
}

impl SagaRunnerHandle {
    /// Current counters.
    pub fn stats(&self) -> SagaStatsSnapshot {
        self.stats.snapshot()
    }

    /// Stops taking deliveries, lets the one in hand finish (and be acknowledged), and waits.
    pub async fn shutdown(self) -> SagaStatsSnapshot {
        self.stop.send_replace(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "saga worker task failed");
        }
        self.stats.snapshot()
    }
}

impl<S: Saga> SagaRunner<S> {
    /// A worker in consumer group `saga-{NAME}`, recording steps in `executor`'s store and running
    /// effects through `executor` (its bus and command router).
    ///
    /// # Panics
    /// If `executor` has no event store: saga instances live in it.
    pub fn new(saga: S, env: S::Environment, executor: Executor) -> Self {
        let store = Arc::clone(executor.store().expect("a SagaRunner needs an executor with an event store: Executor::builder().store(..)"));
        Self {
            inner: Arc::new(Inner {
                saga,
                env,
                store,
                executor,
                group: format!("saga-{}", S::NAME),
                max_attempts: 16,
                max_deliveries: 5,
                max_in_hand: 64,
                deadline_poll: Duration::from_millis(100),
                deadline_lease: Duration::from_secs(30),
                stats: Arc::default(),
                metrics: SagaMetrics::new(S::NAME),
                detached: Tracker::new(),
                deadlines_in_hand: Mutex::default(),
                kept: Kept::new(DEFAULT_KEPT),
            }),
        }
    }

    fn configure(mut self, f: impl FnOnce(&mut Inner<S>)) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("configure a SagaRunner before it runs");
        f(inner);
        self
    }

    /// Uses another consumer group name.
    #[must_use]
    pub fn with_group(self, group: impl Into<String>) -> Self {
        let group = group.into();
        self.configure(|i| i.group = group)
    }

    /// How many times a delivery is attempted before it is dead-lettered (default 5).
    #[must_use]
    pub fn with_max_deliveries(self, n: u32) -> Self {
        self.configure(|i| i.max_deliveries = n.max(1))
    }

    /// How many deliveries a worker holds at once (default 64): steps of different instances run
    /// concurrently up to this bound, steps of one instance one after the other in delivery order.
    /// `1` handles one delivery at a time.
    #[must_use]
    pub fn with_max_in_hand(self, n: usize) -> Self {
        self.configure(|i| i.max_in_hand = n.max(1))
    }

    /// How many instances the worker keeps in memory between steps (default 10,000; 0 keeps
    /// none, so every step replays its instance's stream). A step of a kept instance is decided on
    /// the kept state and recorded with the kept version: if another worker recorded a step of the
    /// instance meanwhile, the record conflicts and the step replays the stream and decides again,
    /// as without the cache. A step already recorded (a redelivery) is always looked up in the
    /// stream. The least recently used instance goes first.
    #[must_use]
    pub fn with_cache_capacity(self, instances: usize) -> Self {
        self.configure(|i| i.kept = Kept::new(instances))
    }

    /// How often a spawned worker looks for due deadlines (default 100 ms, on the executor's
    /// clock): a deadline fires at most this late while workers run.
    #[must_use]
    pub fn with_deadline_poll(self, every: Duration) -> Self {
        self.configure(|i| i.deadline_poll = every.max(Duration::from_millis(1)))
    }

    /// How long a worker holds a deadline it claimed before another may claim it (default 30 s):
    /// a worker that dies holding deadlines releases them this late. Make it longer than a step
    /// takes; a step outliving its lease is still recorded once (the instance stream's version
    /// decides), its effects may run twice, idempotently.
    #[must_use]
    pub fn with_deadline_lease(self, lease: Duration) -> Self {
        self.configure(|i| i.deadline_lease = lease.max(Duration::from_millis(1)))
    }

    /// The consumer name the saga's deadlines and inbox marks are stored under (`saga.{NAME}`).
    pub fn consumer() -> String {
        format!("saga.{}", S::NAME)
    }

    /// The stream of an instance.
    pub fn instance_stream(instance_id: &str) -> Result<StreamId, SagaError> {
        StreamId::for_instance(&format!("saga.{}", S::NAME), instance_id).map_err(|source| SagaError::InvalidInstance { saga: S::NAME, source })
    }

    /// The step id of an event: the same in every process.
    pub fn step_id(event_id: Uuid) -> Uuid {
        Uuid::new_v5(&SAGA_STEP_NAMESPACE, format!("{}/{event_id}", S::NAME).as_bytes())
    }

    /// The id of the follow-up step fed back by the effect at `path` of step `cause`.
    pub fn follow_up_id(cause: Uuid, path: &EffectPath) -> Uuid {
        let mut name = b"follow-up".to_vec();
        name.extend(path.to_bytes());
        Uuid::new_v5(&cause, &name)
    }

    /// The id of the step that feeds deadline `deadline_id` to its instance: the same in every
    /// process, so a deadline fired twice is recognised.
    pub fn deadline_step_id(deadline_id: Uuid) -> Uuid {
        Uuid::new_v5(&deadline_id, b"deadline-step")
    }

    /// The id a step `step_id` gives the deadline `name` it schedules.
    pub fn deadline_id(step_id: Uuid, name: &str) -> Uuid {
        let mut v = b"deadline/".to_vec();
        v.extend(name.as_bytes());
        Uuid::new_v5(&step_id, &v)
    }

    /// Claims the deadlines due now (on the executor's clock) and feeds each to its instance, one
    /// after the other; returns how many were handled. A spawned worker does this by itself every
    /// [`SagaRunner::with_deadline_poll`]; call it when driving the runner by hand.
    pub async fn fire_due_deadlines(&self) -> Result<usize, SagaError> {
        let claimed = self.inner.claim_due(self.inner.max_in_hand).await?;
        let n = claimed.len();
        for c in claimed {
            self.inner.handle_deadline(c).await;
        }
        Ok(n)
    }

    /// Rebuilds an instance's state from its stream.
    pub async fn load_instance(&self, instance_id: &str) -> Result<S::State, SagaError> {
        let stream = Self::instance_stream(instance_id)?;
        Ok(self.inner.replay(instance_id, &stream, None).await?.state)
    }

    /// Detached effects (delays, futures) and the follow-ups they feed back, still running.
    pub fn detached_in_flight(&self) -> usize {
        self.inner.detached.in_flight()
    }

    /// Waits until no detached effect or follow-up is running (tests; a long delay makes it wait long).
    pub async fn detached_settled(&self) {
        self.inner.detached.idle().await;
    }

    /// Handles one event: decode, load the instance, record the step, execute its effects.
    pub async fn handle_event(&self, event: &SerializedEvent) -> Result<StepOutcome, SagaError> {
        self.inner.handle_event(event).await
    }

    /// Subscribes (the subscription is live when this returns) and spawns the worker loop.
    pub async fn spawn(self) -> Result<SagaRunnerHandle, SagaError> {
        let inner = self.inner;
        let bus = Arc::clone(inner.executor.bus().ok_or(SagaError::NotConfigured { saga: S::NAME, missing: "an event bus" })?);
        let topics = inner.saga.topics();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let stream =
            bus.subscribe_with(&refs, SubscribeOptions::group(inner.group.clone())).await.map_err(|source| SagaError::Bus { saga: S::NAME, source })?;
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::clone(&inner.stats);
        let task = tokio::spawn(Inner::run_loop(inner, stream, stop_rx).instrument(tracing::info_span!("saga", name = S::NAME)));
        Ok(SagaRunnerHandle { stop, task, stats })
    }
}

impl<S: Saga> SagaRunner<S> {
    /// Spawns a worker fed by the **event store** instead of a bus: the events of the streams
    /// `filter` selects, from the group's checkpoint (stored with the store's read models), in
    /// commit order. Nothing published to a bus that is not durable (in-memory, Zenoh) is lost to
    /// the saga: a restarted worker resumes from its checkpoint. One worker of the group reads at a
    /// time (a lease); each batch's steps run concurrently across instances, in order within one,
    /// and the checkpoint moves past the batch once all are done. Deadlines fire as with
    /// [`SagaRunner::spawn`].
    pub fn spawn_from_store(self, filter: EventFilter) -> Result<SagaRunnerHandle, SagaError> {
        let inner = self.inner;
        let models = Arc::clone(&inner.store)
            .read_model_store()
            .ok_or(SagaError::NotConfigured { saga: S::NAME, missing: "a store that keeps read models (for the checkpoint)" })?;
        let feed =
            StoreSubscription::new(Arc::clone(&inner.store), filter).poll(Duration::from_millis(10), Arc::clone(inner.executor.clock())).named(&inner.group);
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::clone(&inner.stats);
        let task = tokio::spawn(Inner::run_store_loop(inner, feed, models, stop_rx).instrument(tracing::info_span!("saga", name = S::NAME, fed_by = "store")));
        Ok(SagaRunnerHandle { stop, task, stats })
    }
}

impl<S: Saga> Inner<S> {
    async fn handle_event(self: &Arc<Self>, event: &SerializedEvent) -> Result<StepOutcome, SagaError> {
        let Some(input) = self.decode(event)? else {
            tracing::debug!(event_type = %event.event_type, event_id = %event.event_id, saga = S::NAME, "event type not handled by this saga, skipped");
            return Ok(StepOutcome::Skipped);
        };
        let stream = SagaRunner::<S>::instance_stream(&input.instance_id)?;
        let step_id = SagaRunner::<S>::step_id(event.event_id);
        let step = Step { instance_id: input.instance_id, stream, id: step_id, inbox: Some(event.event_id), causation: event.event_id.to_string(), fire: None };
        Arc::clone(self).handle_step(step, input.action).await
    }

    fn decode(&self, event: &SerializedEvent) -> Result<Option<composable_rust_core::SagaInput<S::Action>>, SagaError> {
        self.saga.decode(event).map_err(|source| SagaError::Undecodable {
            saga: S::NAME,
            event_type: event.event_type.clone(),
            event_id: event.event_id,
            source,
        })
    }

    fn reduce(&self, state: &mut S::State, action: S::Action) -> Result<Vec<Effect<S::Action>>, SagaError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.saga.reduce(state, action, &self.env).into_vec()))
            .map_err(|panic| SagaError::Panicked { saga: S::NAME, message: panic_message(&*panic) })
    }

    /// Records and runs one step (a delivered event or a follow-up), or, if it was recorded before,
    /// runs its effects again.
    fn handle_step(self: Arc<Self>, step: Step, action: S::Action) -> BoxFuture<'static, Result<StepOutcome, SagaError>> {
        async move {
            let corrupt = |source| SagaError::CorruptRecord { saga: S::NAME, stream: step.stream.clone(), record_id: step.id, source };
            let payload = encode_payload(&action).map_err(corrupt)?;
            let mut action = Some(action);
            for attempt in 1..=self.max_attempts {
                // A retry replays: the stream moved on without this worker. So does a step the
                // kept instance already recorded (its effects run again from the stream's record).
                let kept = self.kept.take(&step.instance_id).filter(|k| attempt == 1 && !k.steps.contains(&step.id));
                let (mut state, version, mut steps) = if let Some(k) = kept {
                    (k.state, k.version, k.steps)
                } else {
                    let replayed = self.replay(&step.instance_id, &step.stream, Some(step.id)).await?;
                    let mut state = replayed.state;
                    if let Some(recorded) = replayed.found {
                        tracing::debug!(step = %step.id, "step already recorded; executing its effects again (idempotent)");
                        let effects = self.reduce(&mut state, recorded)?;
                        Arc::clone(&self).execute(effects, &step, !replayed.later, replayed.follow_ups).await?;
                        return Ok(StepOutcome::Duplicate);
                    }
                    (state, replayed.version, replayed.steps)
                };
                let a = match action.take() {
                    Some(a) => a,
                    None => decode_payload(&payload).map_err(corrupt)?,
                };
                let metadata = EventMetadata::now().with_correlation_id(step.instance_id.clone()).with_causation_id(step.causation.clone());
                let record = SerializedEvent::new(SAGA_STEP_EVENT_TYPE, payload.clone(), Some(metadata)).with_event_id(step.id);
                let effects = self.reduce(&mut state, a)?;
                let deadlines = self.deadline_changes(&step, &effects).map_err(corrupt)?;
                let mut request = AppendRequest::new(step.stream.clone(), ExpectedVersion::from_loaded(version), vec![record]).with_deadlines(deadlines);
                if let Some(event_id) = step.inbox {
                    // The inbox mark makes "this saga handled this event" part of the same atomic append.
                    request = request.with_inbox(format!("saga.{}", S::NAME), event_id);
                }
                match crate::metrics::timed(Call::Append, self.store.append(request)).await {
                    Ok(r) if r.duplicate => tracing::debug!(attempt, "another worker recorded this step concurrently; reloading"),
                    Ok(_) => {
                        crate::metrics::events_appended(1);
                        // Kept before the effects run: the follow-ups they feed back are steps of
                        // this instance and start from here.
                        steps.insert(step.id);
                        self.kept.keep(&step.instance_id, KeptInstance { state, version: version.next(), steps });
                        Arc::clone(&self).execute(effects, &step, true, Vec::new()).await?;
                        return Ok(StepOutcome::Applied);
                    }
                    Err(EventStoreError::DeadlineNotPending { id }) => {
                        // Cancelled or replaced by a step recorded meanwhile: the instance decided
                        // it no longer wants it.
                        tracing::debug!(deadline = %id, "deadline no longer pending; not fed to the instance");
                        return Ok(StepOutcome::Skipped);
                    }
                    Err(EventStoreError::ConcurrencyConflict { .. } | EventStoreError::AlreadyProcessed { .. }) => {
                        tracing::debug!(attempt, "saga instance changed concurrently or the event was handled meanwhile; reloading");
                    }
                    Err(source) if source.is_retryable() && attempt < self.executor.retry_policy().max_attempts => {
                        // The record may have been stored before the error: reloading finds it if so.
                        tracing::warn!(attempt, error = %source, "recording the saga step failed; reloading and retrying");
                        self.executor.clock().sleep(self.executor.retry_policy().backoff_after(attempt)).await;
                    }
                    Err(source) => return Err(SagaError::Store { saga: S::NAME, source }),
                }
            }
            Err(SagaError::TooManyConflicts { saga: S::NAME, stream: step.stream.clone(), attempts: self.max_attempts })
        }
        .boxed()
    }

    async fn replay(&self, instance_id: &str, stream: &StreamId, stop_at: Option<Uuid>) -> Result<Replayed<S::State, S::Action>, SagaError> {
        let records = read_stream_to_end(&*self.store, stream, Version(1)).await.map_err(|source| SagaError::Store { saga: S::NAME, source })?;
        let mut state = self.saga.initial_state(instance_id);
        let version = records.last().and_then(|r| r.stream_version).unwrap_or_default();
        for (k, record) in records.iter().enumerate() {
            let action: S::Action = decode_payload(&record.data).map_err(|source| SagaError::CorruptRecord {
                saga: S::NAME,
                stream: stream.clone(),
                record_id: record.event_id,
                source,
            })?;
            if Some(record.event_id) == stop_at {
                // The follow-ups this step fed back before (recorded after it, caused by it): their
                // effects may not have run (a crash, a failure), so they run again with the step's.
                let cause = record.event_id.to_string();
                let mut follow_ups = Vec::new();
                for later in records[k + 1..].iter().filter(|r| r.metadata.causation_id.as_deref() == Some(cause.as_str())) {
                    let action = decode_payload(&later.data).map_err(|source| SagaError::CorruptRecord {
                        saga: S::NAME,
                        stream: stream.clone(),
                        record_id: later.event_id,
                        source,
                    })?;
                    follow_ups.push((later.event_id, action));
                }
                return Ok(Replayed { state, version, found: Some(action), later: k + 1 < records.len(), follow_ups, steps: std::collections::HashSet::new() });
            }
            // Replaying rebuilds state only; the effects ran when the step was first handled.
            let _ = self.reduce(&mut state, action)?;
        }
        let steps = records.iter().map(|r| r.event_id).collect();
        Ok(Replayed { state, version, found: None, later: false, follow_ups: Vec::new(), steps })
    }

    /// Executes a step's effects (its waiting effects detached unless `with_waiting` is false),
    /// then records and runs the follow-up steps fed back meanwhile, in path order, then runs again
    /// the follow-ups recorded for this step before (`recorded`, on a redelivery) that were not fed
    /// back this time: a recorded follow-up is a decision taken, whose effects must run even if the
    /// effect that fed it back succeeds now.
    async fn execute(
        self: Arc<Self>,
        effects: Vec<Effect<S::Action>>,
        step: &Step,
        with_waiting: bool,
        recorded: Vec<(Uuid, S::Action)>,
    ) -> Result<(), SagaError> {
        let effects: Vec<_> = if with_waiting { effects } else { effects.into_iter().take_while(|e| !e.waits()).collect() };
        if effects.is_empty() {
            return Arc::clone(&self).run_recorded_follow_ups(step, recorded, &[]).await;
        }
        // While the step's own run is in progress, fed-back actions are collected and handled before
        // the acknowledgement; after it, a detached effect's action starts a follow-up of its own.
        let collected: Collected<S::Action> = Arc::new(Mutex::new(Some(Vec::new())));
        let feedback: Feedback<S::Action> = {
            let collected = Arc::clone(&collected);
            let runner = Arc::downgrade(&self);
            let step = step.clone();
            Arc::new(move |path, action| {
                let mut slot = collected.lock();
                if let Some(v) = slot.as_mut() {
                    v.push((path, action));
                    return;
                }
                drop(slot);
                let Some(runner) = runner.upgrade() else { return };
                let follow_up = step.follow_up(SagaRunner::<S>::follow_up_id(step.id, &path));
                let guard = runner.detached.enter();
                tokio::spawn(
                    async move {
                        let what = format!("saga {} follow-up {} of {}", S::NAME, follow_up.id, follow_up.stream);
                        if let Err(e) = Arc::clone(&runner).handle_step(follow_up, action).await {
                            dead_letter(&**runner.executor.dead_letters(), what, e.to_string(), 1, None);
                        }
                        drop(guard);
                    }
                    .in_current_span(),
                );
            })
        };
        let scope = ExecutionScope::caused_by(step.id)
            .with_correlation_id(step.instance_id.clone())
            .with_cancel_scope(step.stream.as_str())
            .detach_waiting(self.detached.clone())
            .deadlines_recorded()
            .caller_retries();
        let result = self.executor.run(effects, &feedback, &scope).await;
        let mut fed_back = collected.lock().take().unwrap_or_default();
        if let Err(source) = result {
            if fed_back.is_empty() {
                Arc::clone(&self).run_recorded_follow_ups(step, recorded, &[]).await?;
                return Err(SagaError::Effect { saga: S::NAME, source });
            }
            tracing::info!(error = %source, "effect failed; the saga handles it with the action fed back");
        }
        fed_back.sort_by(|a, b| a.0.cmp(&b.0));
        let mut handled = Vec::with_capacity(fed_back.len());
        for (path, action) in fed_back {
            let follow_up = step.follow_up(SagaRunner::<S>::follow_up_id(step.id, &path));
            handled.push(follow_up.id);
            Arc::clone(&self).handle_step(follow_up, action).await?;
        }
        self.run_recorded_follow_ups(step, recorded, &handled).await
    }

    /// Runs again (their effects, idempotently) the recorded follow-ups of `step` not in `handled`.
    async fn run_recorded_follow_ups(self: Arc<Self>, step: &Step, recorded: Vec<(Uuid, S::Action)>, handled: &[Uuid]) -> Result<(), SagaError> {
        for (id, action) in recorded {
            if handled.contains(&id) {
                continue;
            }
            tracing::debug!(step = %step.id, follow_up = %id, "running the effects of a follow-up recorded before");
            Arc::clone(&self).handle_step(step.follow_up(id), action).await?;
        }
        Ok(())
    }

    /// The deadline changes a step stores with its record: the firing it records, then the net
    /// decisions of its effects, due times taken on the executor's clock.
    fn deadline_changes(&self, step: &Step, effects: &[Effect<S::Action>]) -> Result<Vec<DeadlineChange>, CodecError> {
        let mut out: Vec<DeadlineChange> = step.fire.map(|id| DeadlineChange::Fire { id }).into_iter().collect();
        if !deadline::any(effects) {
            return Ok(out);
        }
        let now = self.executor.clock().now();
        let owner = DeadlineOwner::new(SagaRunner::<S>::consumer(), step.instance_id.clone());
        for decision in deadline::net(deadline::changes(effects)) {
            if let Some(problem) = deadline::refusal(&decision) {
                // Refused like the in-process timers refuse it: the rest of the step stands.
                dead_letter(&**self.executor.dead_letters(), format!("deadline of saga {} instance {}", S::NAME, step.instance_id), problem, 1, None);
                continue;
            }
            out.push(match decision {
                Decision::Schedule(d) => DeadlineChange::Schedule(StoredDeadline {
                    id: SagaRunner::<S>::deadline_id(step.id, &d.name),
                    owner: owner.clone(),
                    name: d.name.clone(),
                    due_at: d.due.instant(now),
                    payload: encode_payload(&d.action)?,
                }),
                Decision::Cancel(name) => DeadlineChange::Cancel { owner: owner.clone(), name: name.to_string() },
            });
        }
        Ok(out)
    }

    async fn claim_due(&self, limit: usize) -> Result<Vec<ClaimedDeadline>, SagaError> {
        let now = self.executor.clock().now();
        self.store
            .claim_due_deadlines(&SagaRunner::<S>::consumer(), now, self.deadline_lease, limit)
            .await
            .map_err(|source| SagaError::Store { saga: S::NAME, source })
    }

    /// Feeds a claimed deadline to its instance as a step (recorded with its firing), retrying
    /// retryable failures in the lane; completes it once handled. A failure that stays retryable
    /// leaves it claimed: it is claimed again when the lease ends. A deadline that cannot be
    /// decoded, or whose step fails for good, is dead-lettered and completed.
    async fn handle_deadline(self: &Arc<Self>, claimed: ClaimedDeadline) {
        // Out of hand however the handling ends (a panic in a dead-letter sink included): an id left
        // in the set would be neither queued again by this worker nor forgotten.
        struct OutOfHand<'a>(&'a Mutex<std::collections::HashSet<Uuid>>, Uuid);
        impl Drop for OutOfHand<'_> {
            fn drop(&mut self) {
                self.0.lock().remove(&self.1);
            }
        }
        let _in_hand = OutOfHand(&self.deadlines_in_hand, claimed.deadline.id);
        self.fire_claimed(claimed).await;
    }

    async fn fire_claimed(self: &Arc<Self>, claimed: ClaimedDeadline) {
        let d = claimed.deadline;
        let what = format!("saga {} deadline {} of {}", S::NAME, d.name, d.owner.instance);
        let letters = Arc::clone(self.executor.dead_letters());
        // The dead letter carries the deadline as an event (payload = the encoded action), so it
        // can be replayed by hand.
        let as_event = {
            let mut metadata = EventMetadata::now().with_correlation_id(d.owner.instance.clone());
            metadata.headers.insert("deadline".into(), d.name.clone());
            metadata.headers.insert("consumer".into(), d.owner.consumer.clone());
            SerializedEvent::new(DEADLINE_EVENT_TYPE, d.payload.clone(), Some(metadata)).with_event_id(d.id)
        };
        let give_up = |error: String, attempts: u32| {
            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            self.metrics.count(SagaCount::DeadLettered);
            dead_letter(&*letters, what.clone(), error, attempts, Some(as_event.clone()));
        };
        if claimed.claims > self.max_deliveries {
            give_up(
                format!("claimed {} times without being handled (each claim retried it {} times)", claimed.claims - 1, self.max_deliveries),
                claimed.claims,
            );
            self.complete(d.id).await;
            return;
        }
        let stream = match SagaRunner::<S>::instance_stream(&d.owner.instance) {
            Ok(s) => s,
            Err(e) => {
                give_up(e.to_string(), 1);
                self.complete(d.id).await;
                return;
            }
        };
        let step = Step {
            instance_id: d.owner.instance.clone(),
            stream,
            id: SagaRunner::<S>::deadline_step_id(d.id),
            inbox: None,
            causation: d.id.to_string(),
            fire: Some(d.id),
        };
        let mut attempt = 1;
        loop {
            let action: S::Action = match decode_payload(&d.payload) {
                Ok(a) => a,
                Err(e) => {
                    give_up(format!("the deadline's action cannot be decoded: {e}"), attempt);
                    self.complete(d.id).await;
                    return;
                }
            };
            let span = tracing::info_span!("saga_deadline", deadline = %d.name, instance = %d.owner.instance, fired_before = claimed.fired, attempt);
            crate::trace_context::parent_step(&span, None);
            let outcome = match AssertUnwindSafe(Arc::clone(self).handle_step(step.clone(), action).instrument(span)).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => Err(SagaError::Panicked { saga: S::NAME, message: panic_message(&*panic) }),
            };
            match outcome {
                // Cancelled or replaced meanwhile (or fired by a worker whose lease outlived it):
                // the row is gone or someone else's to complete.
                Ok(StepOutcome::Skipped) => return,
                Ok(outcome) => {
                    if outcome == StepOutcome::Applied {
                        self.stats.deadlines_fired.fetch_add(1, Ordering::Relaxed);
                        self.metrics.count(SagaCount::DeadlineFired);
                    }
                    self.complete(d.id).await;
                    return;
                }
                Err(e) if e.is_retryable() && attempt < self.max_deliveries => {
                    tracing::warn!(error = %e, attempt, "deadline step failed, retrying in its lane");
                    self.executor.clock().sleep(self.executor.retry_policy().backoff_after(attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    give_up(e.to_string(), attempt);
                    self.complete(d.id).await;
                    return;
                }
            }
        }
    }

    async fn complete(&self, id: Uuid) {
        if let Err(e) = self.store.complete_deadline(id).await {
            // It is claimed again after its lease, found recorded, and completed then.
            tracing::warn!(error = %e, deadline = %id, "completing the deadline failed");
        }
    }

    /// Which lane a delivery goes to: its instance (steps of one instance keep their order), or, for
    /// an event the saga skips or cannot decode, a lane of its own.
    fn lane_key(&self, event: &SerializedEvent) -> String {
        // A decoder that panics on this event gets the event a lane of its own; the step then
        // reports the panic.
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.saga.decode(event))) {
            Ok(Ok(Some(input))) => input.instance_id,
            _ => format!("event/{}", event.event_id),
        }
    }

    fn lanes(self: &Arc<Self>) -> crate::lanes::Lanes<String, Work> {
        let runner = Arc::clone(self);
        let handler: crate::lanes::Handler<Work> = Arc::new(move |work| {
            let runner = Arc::clone(&runner);
            async move {
                match work {
                    Work::Delivery(delivery) => runner.handle_delivery(delivery).await,
                    Work::Stored(event) => runner.process(&event, 1).await,
                    Work::Deadline(claimed) => runner.handle_deadline(claimed).await,
                }
            }
            .boxed()
        });
        crate::lanes::Lanes::new(self.max_in_hand, handler)
    }

    /// Claims the due deadlines and queues each in its instance's lane; returns whether the claim
    /// was full (more may be due).
    async fn fire_due_into(&self, lanes: &crate::lanes::Lanes<String, Work>) -> bool {
        // Only as many as there are free slots, so a backlog of due deadlines never makes the
        // worker wait to queue them (and so hold back deliveries).
        let free = self.max_in_hand.saturating_sub(lanes.in_hand());
        if free == 0 {
            return false;
        }
        let claimed = match self.claim_due(free).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "looking for due deadlines failed; trying again");
                Vec::new()
            }
        };
        let full = claimed.len() >= free;
        for c in claimed {
            // Claimed again while still in hand: that claim renewed its lease; it is queued once.
            if !self.deadlines_in_hand.lock().insert(c.deadline.id) {
                continue;
            }
            lanes.push(c.deadline.owner.instance.clone(), Work::Deadline(c)).await;
        }
        full
    }

    async fn run_loop(self: Arc<Self>, mut stream: composable_rust_core::EventStream, mut stop: watch::Receiver<bool>) {
        let lanes = self.lanes();
        // Deadlines due while no worker ran are claimed at once.
        let mut poll = self.executor.clock().sleep(Duration::ZERO);
        loop {
            // Not biased between the bus and the deadline poll: a backlog of either never starves
            // the other.
            let item = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                () = &mut poll => None,
                item = stream.next() => Some(item),
            };
            let Some(item) = item else {
                let full = self.fire_due_into(&lanes).await;
                poll = self.executor.clock().sleep(if full { Duration::ZERO } else { self.deadline_poll });
                continue;
            };
            let Some(item) = item else { break };
            match item {
                Ok(delivery) => {
                    let key = self.lane_key(delivery.event());
                    lanes.push(key, Work::Delivery(delivery)).await;
                }
                Err(EventBusError::Lagged { group, missed }) => {
                    self.stats.lagged_events.fetch_add(missed, Ordering::Relaxed);
                    self.metrics.count(SagaCount::Lagged(missed));
                    dead_letter(
                        &**self.executor.dead_letters(),
                        format!("saga {} (group {group}) missed events", S::NAME),
                        format!("bus lagged, {missed} events missed"),
                        1,
                        None,
                    );
                }
                Err(EventBusError::Closed) => break,
                Err(e) => {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    self.metrics.count(SagaCount::DeadLettered);
                    dead_letter(&**self.executor.dead_letters(), format!("saga {} delivery", S::NAME), e.to_string(), 1, None);
                }
            }
        }
        // The deliveries in hand finish (and are acknowledged) before the worker reports stopped.
        lanes.idle().await;
        tracing::info!("saga worker stopped");
    }

    /// Handles a delivery and acknowledges it. A retryable failure is retried here, in the
    /// instance's lane, with backoff (not negatively acknowledged: a redelivery would come back
    /// behind later steps of the same instance and overtake nothing but order), up to
    /// `max_deliveries` attempts, then dead-lettered. A panic anywhere in the step is dead-lettered.
    async fn handle_delivery(self: &Arc<Self>, delivery: composable_rust_core::Delivery) {
        self.process(delivery.event(), delivery.attempt()).await;
        if let Err(e) = delivery.ack().await {
            tracing::warn!(error = %e, "acknowledgement failed; the event may be delivered again (it will be recognised)");
        }
    }

    /// Handles one event with retries in its lane, counting the outcome; dead-letters what fails
    /// for good. What the caller acknowledges or checkpoints after.
    async fn process(self: &Arc<Self>, event: &SerializedEvent, first_attempt: u32) {
        let mut attempt = first_attempt;
        let outcome = loop {
            let span = tracing::info_span!("saga_step", event_type = %event.event_type, event_id = %event.event_id, attempt);
            // The step continues the trace of the command that caused the event.
            crate::trace_context::parent_step(&span, Some(&event.metadata));
            let outcome = match AssertUnwindSafe(self.handle_event(event).instrument(span)).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => Err(SagaError::Panicked { saga: S::NAME, message: panic_message(&*panic) }),
            };
            match outcome {
                Err(e) if e.is_retryable() && attempt < self.max_deliveries => {
                    tracing::warn!(error = %e, attempt, "saga step failed, retrying in its lane");
                    self.stats.redelivery_requests.fetch_add(1, Ordering::Relaxed);
                    self.metrics.count(SagaCount::Retry);
                    self.executor.clock().sleep(self.executor.retry_policy().backoff_after(attempt)).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        match outcome {
            Ok(o) => {
                let (counter, count) = match o {
                    StepOutcome::Applied => (&self.stats.applied, SagaCount::Applied),
                    StepOutcome::Duplicate => (&self.stats.duplicates, SagaCount::Duplicate),
                    StepOutcome::Skipped => (&self.stats.skipped, SagaCount::Skipped),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.metrics.count(count);
            }
            Err(e) => {
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.metrics.count(SagaCount::DeadLettered);
                dead_letter(
                    &**self.executor.dead_letters(),
                    format!("saga {} step for {} {}", S::NAME, event.event_type, event.event_id),
                    e.to_string(),
                    attempt,
                    Some(event.clone()),
                );
            }
        }
    }

    /// The worker loop fed by the store: batches from the checkpoint (kept in the store's read
    /// models under `{group}.checkpoint`), each batch's steps run in the lanes, then the checkpoint
    /// moves past the batch. One worker of the group reads at a time (a lease); all fire deadlines.
    async fn run_store_loop(self: Arc<Self>, mut feed: StoreSubscription, models: Arc<dyn ReadModelStore>, mut stop: watch::Receiver<bool>) {
        let lanes = self.lanes();
        let checkpoint = format!("{}.checkpoint", self.group);
        let worker = Uuid::new_v4().to_string();
        let lease = self.deadline_lease;
        let mut at = match models.checkpoint(&checkpoint).await {
            Ok(c) => c.position,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the saga's checkpoint; the worker stops");
                return;
            }
        };
        feed = feed.after(at);
        let mut poll = self.executor.clock().sleep(Duration::ZERO);
        loop {
            let leased = matches!(models.try_lease(&checkpoint, &worker, self.executor.clock().now(), lease).await, Ok(true));
            let batch = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                () = &mut poll => None,
                batch = feed.next_batch(), if leased => Some(batch),
            };
            let batch = match batch {
                None => {
                    self.fire_due_into(&lanes).await;
                    poll = self.executor.clock().sleep(self.deadline_poll);
                    continue;
                }
                Some(Ok(batch)) => batch,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "reading the store failed; retrying");
                    self.executor.clock().sleep(self.deadline_poll).await;
                    continue;
                }
            };
            for recorded in batch {
                let key = self.lane_key(&recorded.event);
                lanes.push(key, Work::Stored(recorded.event)).await;
            }
            // Every step of the batch done (or dead-lettered): the checkpoint moves past it.
            lanes.idle().await;
            let to = feed.position();
            match models.commit(&checkpoint, at, to, Vec::new()).await {
                Ok(()) => at = to,
                Err(ReadModelError::CheckpointMoved { actual, .. }) => {
                    tracing::info!(?actual, "another worker moved the saga's checkpoint; continuing from it");
                    at = actual;
                    feed = StoreSubscription::new(Arc::clone(&self.store), feed_filter(&feed)).after(actual).named(&self.group);
                }
                Err(e) => tracing::warn!(error = %e, "saving the saga's checkpoint failed; the batch will be seen again (recognised)"),
            }
        }
        lanes.idle().await;
        tracing::info!("saga worker (store-fed) stopped");
    }
}

/// What a worker's lanes carry.
enum Work {
    /// A bus delivery.
    Delivery(composable_rust_core::Delivery),
    /// An event read from the store.
    Stored(SerializedEvent),
    /// A deadline that came due.
    Deadline(ClaimedDeadline),
}

/// Actions fed back while a step's run is in progress, with the paths of the effects that fed them
/// back; `None` once the run is over.
type Collected<A> = Arc<Mutex<Option<Vec<(EffectPath, A)>>>>;

/// One step of an instance: a delivered event (with its inbox mark) or a follow-up.
#[derive(Debug, Clone)]
struct Step {
    instance_id: String,
    stream: StreamId,
    id: Uuid,
    inbox: Option<Uuid>,
    causation: String,
    /// The deadline this step feeds to the instance: its firing is stored with the step.
    fire: Option<Uuid>,
}

impl Step {
    fn follow_up(&self, id: Uuid) -> Step {
        Step { instance_id: self.instance_id.clone(), stream: self.stream.clone(), id, inbox: None, causation: self.id.to_string(), fire: None }
    }
}

struct Replayed<S, A> {
    state: S,
    version: Version,
    /// The recorded action of the step looked for, if it was found.
    found: Option<A>,
    /// Whether steps were recorded after it.
    later: bool,
    /// The follow-ups it fed back that were recorded (id, action), in stream order.
    follow_ups: Vec<(Uuid, A)>,
    /// Ids of every step in the stream (when the step looked for was not found).
    steps: std::collections::HashSet<Uuid>,
}
