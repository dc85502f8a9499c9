//! The effect executor: runs the effects of one `reduce` call **in the order returned**.
//!
//! - A sequence (the effects of one `reduce`, or an `Effect::Sequential`) runs one effect after the
//!   other and stops at the first failed store, bus or dispatch effect: the failed effect's `on_error`
//!   action is fed back and the remaining effects are skipped (and reported to the observer). So a
//!   `PublishEvent` after a failed `AppendEvents` is never executed.
//! - When an `AppendEvents` is followed, in the same sequence, by `PublishEvent`s of events it appends,
//!   the publish intents are stored with the append (transactional outbox). After each publish
//!   succeeds the intent is marked done; if the process dies first, [`crate::outbox`] publishes it.
//!   The published event is the stored one (with stream id and version set).
//! - Retryable errors are retried with the [`RetryPolicy`]'s backoff on the executor's clock; a
//!   concurrency conflict is never retried here (the command must be decided again on fresh state).
//!   Failures other than conflicts are dead-lettered.
//! - `Parallel` is the only way effects run concurrently.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use composable_rust_core::{
    AppendRequest, AppendResult, Clock, CommandEnvelope, CommandOutcome, DispatchError, Effect, EventBusError, EventStore, EventStoreError,
    EventStoreOperation, ExpectedVersion, OutboxIntent, SerializedEvent, StreamId, Topic, Version,
};
use futures::FutureExt;
use futures::future::{Abortable, BoxFuture};
use tracing::Instrument;
use uuid::Uuid;

use crate::cancellation::CancellationRegistry;
use crate::clock::SystemClock;
use crate::dead_letter::{DeadLetterSink, InMemoryDeadLetters, dead_letter};
use crate::retry::RetryPolicy;

/// Where actions produced by effects go (the store's queue, a test's received list, ...).
pub type Feedback<A> = Arc<dyn Fn(A) + Send + Sync>;

/// What to do when an append hits a concurrency conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// Feed the append's `on_error` action back (the reducer decides). The default for a `Store`.
    #[default]
    FeedBack,
    /// Return the conflict to the caller without feeding anything back: the aggregate handler then
    /// reloads the stream and decides the command again.
    Abort,
}

/// Per-run context: ids to stamp on dispatched commands, conflict policy.
#[derive(Debug, Default)]
pub struct ExecutionScope {
    command_id_base: Option<Uuid>,
    counter: AtomicU32,
    causation_id: Option<String>,
    conflict: ConflictPolicy,
}

impl ExecutionScope {
    /// A scope whose dispatched commands get ids derived from `base` (deterministic: the same step run
    /// again dispatches commands with the same ids, which handlers de-duplicate).
    pub fn deterministic(base: Uuid, causation_id: Option<String>) -> Self {
        Self { command_id_base: Some(base), causation_id, ..Self::default() }
    }

    /// Sets the conflict policy.
    #[must_use]
    pub fn with_conflict_policy(mut self, policy: ConflictPolicy) -> Self {
        self.conflict = policy;
        self
    }

    fn next_command_id(&self) -> Uuid {
        match self.command_id_base {
            Some(base) => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                Uuid::new_v5(&base, &n.to_be_bytes())
            }
            None => Uuid::new_v4(),
        }
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EffectFailure {
    /// An event store effect failed.
    #[error(transparent)]
    Store(#[from] EventStoreError),
    /// A publish failed.
    #[error(transparent)]
    Bus(#[from] EventBusError),
    /// A dispatched command failed.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

impl EffectFailure {
    /// Whether this is a concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, EffectFailure::Store(EventStoreError::ConcurrencyConflict { .. }))
    }
}

/// What the executor did with an effect that talks to the outside, for observers (tests, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EffectRecord {
    /// An append ran.
    Append {
        /// Stream.
        stream_id: StreamId,
        /// Expected version.
        expected_version: ExpectedVersion,
        /// Types of the events.
        event_types: Vec<String>,
        /// Outbox intents stored with it.
        outbox: Vec<OutboxIntent>,
        /// Result.
        outcome: Result<AppendResult, EventStoreError>,
    },
    /// A publish ran.
    Publish {
        /// Topic.
        topic: String,
        /// Event type.
        event_type: String,
        /// Event id.
        event_id: Uuid,
        /// Result.
        outcome: Result<(), EventBusError>,
    },
    /// A command was dispatched.
    Dispatch {
        /// Target name.
        target: String,
        /// The command, rendered with `Debug`.
        command: String,
        /// The id it was sent with.
        command_id: Uuid,
        /// Result.
        outcome: Result<CommandOutcome, DispatchError>,
    },
    /// An effect was not executed because an earlier one in its sequence failed.
    Skipped {
        /// Its kind (`publish_event`, ...).
        kind: &'static str,
    },
}

/// Receives an [`EffectRecord`] for every store, bus and dispatch effect executed or skipped.
pub trait EffectObserver: Send + Sync + 'static {
    /// Called after each such effect.
    fn observe(&self, record: EffectRecord);
}

trait Retryable {
    fn retryable(&self) -> bool;
}
impl Retryable for EventStoreError {
    fn retryable(&self) -> bool {
        self.is_retryable()
    }
}
impl Retryable for EventBusError {
    fn retryable(&self) -> bool {
        self.is_retryable()
    }
}
impl Retryable for DispatchError {
    fn retryable(&self) -> bool {
        self.is_retryable()
    }
}

struct Shared {
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    dead_letters: Arc<dyn DeadLetterSink>,
    observer: Option<Arc<dyn EffectObserver>>,
    cancellations: CancellationRegistry,
}

/// Executes effects. Cheap to clone; clones share the cancellation registry.
#[derive(Clone)]
pub struct Executor {
    shared: Arc<Shared>,
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor").field("retry", &self.shared.retry).finish_non_exhaustive()
    }
}

impl Default for Executor {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// Builds an [`Executor`].
pub struct ExecutorBuilder {
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    dead_letters: Arc<dyn DeadLetterSink>,
    observer: Option<Arc<dyn EffectObserver>>,
}

impl ExecutorBuilder {
    /// The clock for `Delay` and backoff (default: [`SystemClock`]).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The retry policy (default: [`RetryPolicy::default`]).
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Where dead letters go (default: an [`InMemoryDeadLetters`] of 10,000).
    #[must_use]
    pub fn dead_letters(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.dead_letters = sink;
        self
    }

    /// An observer of store, bus and dispatch effects.
    #[must_use]
    pub fn observer(mut self, observer: Arc<dyn EffectObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The executor.
    pub fn build(self) -> Executor {
        Executor {
            shared: Arc::new(Shared {
                clock: self.clock,
                retry: self.retry,
                dead_letters: self.dead_letters,
                observer: self.observer,
                cancellations: CancellationRegistry::default(),
            }),
        }
    }
}

/// Events stored by an append earlier in the current sequence, by id.
struct StoredInSequence {
    event: SerializedEvent,
    store: Arc<dyn EventStore>,
    outbox_topics: Vec<Topic>,
}

impl Executor {
    /// A builder with defaults.
    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder { clock: Arc::new(SystemClock), retry: RetryPolicy::default(), dead_letters: Arc::new(InMemoryDeadLetters::default()), observer: None }
    }

    /// The executor's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// The executor's retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.shared.retry
    }

    /// The dead-letter sink.
    pub fn dead_letters(&self) -> &Arc<dyn DeadLetterSink> {
        &self.shared.dead_letters
    }

    /// Runs `effects` as one sequence (see the module docs).
    pub fn run<'a, A: Send + 'static>(
        &'a self,
        effects: Vec<Effect<A>>,
        feedback: &'a Feedback<A>,
        scope: &'a ExecutionScope,
    ) -> BoxFuture<'a, Result<(), EffectFailure>> {
        self.run_sequence(effects, feedback, scope)
    }

    /// Builds the record only when someone observes: the hot path allocates nothing for it.
    fn observe(&self, record: impl FnOnce() -> EffectRecord) {
        if let Some(o) = &self.shared.observer {
            o.observe(record());
        }
    }

    async fn with_retry<T, E, F, Fut>(&self, what: &(dyn Fn() -> String + Sync), mut op: F) -> (Result<T, E>, u32)
    where
        E: Retryable + fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.retryable() && attempt < self.shared.retry.max_attempts => {
                    let delay = self.shared.retry.backoff_after(attempt);
                    tracing::warn!(what = %what(), error = %e, attempt, ?delay, "retryable failure, retrying");
                    self.shared.clock.sleep(delay).await;
                    attempt += 1;
                }
                other => return (other, attempt),
            }
        }
    }

    fn run_sequence<'a, A: Send + 'static>(
        &'a self,
        effects: Vec<Effect<A>>,
        feedback: &'a Feedback<A>,
        scope: &'a ExecutionScope,
    ) -> BoxFuture<'a, Result<(), EffectFailure>> {
        async move {
            let mut effects: Vec<Option<Effect<A>>> = effects.into_iter().map(Some).collect();
            let mut stored: HashMap<Uuid, StoredInSequence> = HashMap::new();
            for i in 0..effects.len() {
                let Some(effect) = effects[i].take() else { continue };
                let span = tracing::info_span!("effect", kind = effect.kind());
                let result = match effect {
                    Effect::EventStore(EventStoreOperation::AppendEvents { event_store, stream_id, expected_version, events, on_success, on_error }) => {
                        let outbox = outbox_intents(&events, &effects[i + 1..]);
                        let request = AppendRequest { stream_id, expected_version, events, outbox, inbox: None };
                        self.append(request, &event_store, on_success, on_error, feedback, scope, &mut stored).instrument(span).await
                    }
                    Effect::PublishEvent { topic, event, event_bus, on_success, on_error } => {
                        let (event, outbox_store) = match stored.get(&event.event_id) {
                            Some(s) => (s.event.clone(), s.outbox_topics.iter().any(|t| t.as_str() == topic).then(|| Arc::clone(&s.store))),
                            None => (event, None),
                        };
                        self.publish(&topic, event, &*event_bus, outbox_store, on_success, on_error, feedback).instrument(span).await
                    }
                    other => self.run_other(other, feedback, scope).instrument(span).await,
                };
                if let Err(failure) = result {
                    for skipped in effects[i + 1..].iter_mut().filter_map(Option::take) {
                        tracing::debug!(kind = skipped.kind(), error = %failure, "effect skipped: an earlier effect of its sequence failed");
                        self.observe(|| EffectRecord::Skipped { kind: skipped.kind() });
                    }
                    return Err(failure);
                }
            }
            Ok(())
        }
        .boxed()
    }

    #[allow(clippy::too_many_arguments)]
    async fn append<A: Send + 'static>(
        &self,
        request: AppendRequest,
        store: &Arc<dyn EventStore>,
        on_success: Option<composable_rust_core::Callback<AppendResult, A>>,
        on_error: Option<composable_rust_core::Callback<EventStoreError, A>>,
        feedback: &Feedback<A>,
        scope: &ExecutionScope,
        stored: &mut HashMap<Uuid, StoredInSequence>,
    ) -> Result<(), EffectFailure> {
        let what = || format!("append_events to {}", request.stream_id);
        let (outcome, attempts) = self.with_retry(&what, || store.append(request.clone())).await;
        self.observe(|| EffectRecord::Append {
            stream_id: request.stream_id.clone(),
            expected_version: request.expected_version,
            event_types: request.events.iter().map(|e| e.event_type.clone()).collect(),
            outbox: request.outbox.clone(),
            outcome: outcome.clone(),
        });
        match outcome {
            Ok(result) => {
                for (k, mut event) in request.events.into_iter().enumerate() {
                    event.stream_id = Some(request.stream_id.clone());
                    event.stream_version = Some(Version(result.first_version.0 + k as u64));
                    let outbox_topics = request.outbox.iter().filter(|o| o.event_id == event.event_id).map(|o| o.topic.clone()).collect();
                    stored.insert(event.event_id, StoredInSequence { event, store: Arc::clone(store), outbox_topics });
                }
                if let Some(cb) = on_success {
                    feedback(cb(result));
                }
                Ok(())
            }
            Err(error) => {
                let conflict = matches!(error, EventStoreError::ConcurrencyConflict { .. });
                if conflict && scope.conflict == ConflictPolicy::Abort {
                    return Err(error.into());
                }
                if conflict {
                    tracing::info!(error = %error, "append conflicted");
                } else {
                    dead_letter(&*self.shared.dead_letters, what(), error.to_string(), attempts, request.events.first().cloned());
                }
                if let Some(cb) = on_error {
                    feedback(cb(error.clone()));
                }
                Err(error.into())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn publish<A: Send + 'static>(
        &self,
        topic: &str,
        event: SerializedEvent,
        bus: &dyn composable_rust_core::EventBus,
        outbox_store: Option<Arc<dyn EventStore>>,
        on_success: Option<A>,
        on_error: Option<composable_rust_core::Callback<EventBusError, A>>,
        feedback: &Feedback<A>,
    ) -> Result<(), EffectFailure> {
        let what = || format!("publish_event {} {} to {topic}", event.event_type, event.event_id);
        let (outcome, attempts) = self.with_retry(&what, || bus.publish(topic, &event)).await;
        self.observe(|| EffectRecord::Publish {
            topic: topic.to_string(),
            event_type: event.event_type.clone(),
            event_id: event.event_id,
            outcome: outcome.clone(),
        });
        match outcome {
            Ok(()) => {
                if let Some(store) = outbox_store {
                    if let Ok(t) = Topic::new(topic) {
                        if let Err(e) = store.mark_published(event.event_id, &t).await {
                            // Not fatal: the relay publishes it again (at-least-once; consumers de-duplicate).
                            tracing::warn!(error = %e, event_id = %event.event_id, "could not mark outbox entry published");
                        }
                    }
                }
                if let Some(a) = on_success {
                    feedback(a);
                }
                Ok(())
            }
            Err(error) => {
                let note = if outbox_store.is_some() { " (kept in the outbox: the relay will publish it)" } else { "" };
                dead_letter(&*self.shared.dead_letters, format!("{}{note}", what()), error.to_string(), attempts, Some(event));
                if let Some(cb) = on_error {
                    feedback(cb(error.clone()));
                }
                Err(error.into())
            }
        }
    }

    fn run_other<'a, A: Send + 'static>(
        &'a self,
        effect: Effect<A>,
        feedback: &'a Feedback<A>,
        scope: &'a ExecutionScope,
    ) -> BoxFuture<'a, Result<(), EffectFailure>> {
        async move {
            match effect {
                Effect::None => Ok(()),
                e @ (Effect::EventStore(EventStoreOperation::AppendEvents { .. }) | Effect::PublishEvent { .. }) => {
                    self.run_sequence(vec![e], feedback, scope).await
                }
                Effect::EventStore(EventStoreOperation::LoadEvents { event_store, stream_id, from_version, on_success, on_error }) => {
                    let what = || format!("load_events of {stream_id}");
                    let (outcome, _) =
                        self.with_retry(&what, || composable_rust_core::event_store::read_stream_to_end(&*event_store, &stream_id, from_version)).await;
                    Self::finish_store_read(outcome, on_success, on_error, feedback)
                }
                Effect::EventStore(EventStoreOperation::LoadSnapshot { event_store, stream_id, on_success, on_error }) => {
                    let what = || format!("load_snapshot of {stream_id}");
                    let (outcome, _) = self.with_retry(&what, || event_store.load_snapshot(&stream_id)).await;
                    Self::finish_store_read(outcome, on_success, on_error, feedback)
                }
                Effect::EventStore(EventStoreOperation::SaveSnapshot { event_store, snapshot, on_error }) => {
                    let what = || format!("save_snapshot of {}", snapshot.stream_id);
                    let (outcome, attempts) = self.with_retry(&what, || event_store.save_snapshot(snapshot.clone())).await;
                    outcome.map_err(|e| {
                        dead_letter(&*self.shared.dead_letters, what(), e.to_string(), attempts, None);
                        if let Some(cb) = on_error {
                            feedback(cb(e.clone()));
                        }
                        e.into()
                    })
                }
                Effect::DispatchCommand { target, command, correlation_id, on_error } => {
                    let envelope = CommandEnvelope { command_id: scope.next_command_id(), correlation_id, causation_id: scope.causation_id.clone(), command };
                    let what = || format!("dispatch {:?} to {}", envelope.command, target.name());
                    let (outcome, attempts) = self.with_retry(&what, || target.handle(&envelope)).await;
                    self.observe(|| EffectRecord::Dispatch {
                        target: target.name().to_string(),
                        command: format!("{:?}", envelope.command),
                        command_id: envelope.command_id,
                        outcome: outcome.clone(),
                    });
                    match outcome {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            dead_letter(&*self.shared.dead_letters, what(), e.to_string(), attempts, None);
                            if let Some(cb) = on_error {
                                feedback(cb(e.clone()));
                            }
                            Err(e.into())
                        }
                    }
                }
                Effect::Future(fut) => {
                    if let Some(a) = fut.await {
                        feedback(a);
                    }
                    Ok(())
                }
                Effect::Delay { duration, action } => {
                    self.shared.clock.sleep(duration).await;
                    feedback(*action);
                    Ok(())
                }
                Effect::Sequential(inner) => self.run_sequence(inner, feedback, scope).await,
                Effect::Parallel(inner) => {
                    let results = futures::future::join_all(inner.into_iter().map(|e| self.run_sequence(vec![e], feedback, scope))).await;
                    results.into_iter().collect::<Result<Vec<()>, _>>().map(|_| ())
                }
                Effect::Cancellable { id, cancel_in_flight, effect } => {
                    let (token, registration) = self.shared.cancellations.register(&id, cancel_in_flight);
                    let outcome = Abortable::new(self.run_sequence(vec![*effect], feedback, scope), registration).await;
                    self.shared.cancellations.finished(&id, token);
                    outcome.unwrap_or_else(|_aborted| {
                        tracing::debug!(id = ?id, "cancellable effect cancelled");
                        Ok(())
                    })
                }
                Effect::Cancel(id) => {
                    let n = self.shared.cancellations.cancel(&id);
                    tracing::debug!(id = ?id, cancelled = n, "cancel");
                    Ok(())
                }
            }
        }
        .boxed()
    }

    fn finish_store_read<T, A>(
        outcome: Result<T, EventStoreError>,
        on_success: composable_rust_core::Callback<T, A>,
        on_error: Option<composable_rust_core::Callback<EventStoreError, A>>,
        feedback: &Feedback<A>,
    ) -> Result<(), EffectFailure> {
        match outcome {
            Ok(v) => {
                feedback(on_success(v));
                Ok(())
            }
            Err(e) => {
                if let Some(cb) = on_error {
                    feedback(cb(e.clone()));
                }
                Err(e.into())
            }
        }
    }
}

/// Publish intents for the events of this append that later effects of the same sequence publish.
fn outbox_intents<A>(events: &[SerializedEvent], later: &[Option<Effect<A>>]) -> Vec<OutboxIntent> {
    later
        .iter()
        .flatten()
        .filter_map(|e| match e {
            Effect::PublishEvent { topic, event, .. } if events.iter().any(|x| x.event_id == event.event_id) => {
                Topic::new(topic).ok().map(|topic| OutboxIntent { topic, event_id: event.event_id })
            }
            _ => None,
        })
        .collect()
}
