//! [`AggregateHandler`]: handles commands for an [`Aggregate`] whose state lives in its event stream.
//!
//! For each command: load the instance (snapshot, then the events after it), skip it if its command
//! id already caused events in the stream (a redelivered command), reduce, execute the effects with
//! the conflict policy `Abort`; on a concurrency conflict reload and decide again, up to a bound.
//! Nothing is kept in memory between commands, so any process can handle any command.

use std::sync::Arc;

use chrono::Utc;
use composable_rust_core::event_store::read_stream_to_end;
use composable_rust_core::{
    Aggregate, CommandEnvelope, CommandHandler, CommandOutcome, DispatchError, Effect, EventStore, EventStoreOperation, Snapshot, StreamId, Version,
};
use parking_lot::Mutex;
use tracing::Instrument;

use crate::executor::{ConflictPolicy, EffectFailure, ExecutionScope, Executor, Feedback};

/// Handles commands for aggregate `A`. Register it as an `Arc<dyn CommandHandler>` in the
/// environments of the sagas that drive it.
pub struct AggregateHandler<A: Aggregate> {
    aggregate: A,
    env: A::Environment,
    store: Arc<dyn EventStore>,
    executor: Executor,
    max_attempts: u32,
}

/// An instance as loaded from its stream.
#[derive(Debug)]
pub struct Loaded<S> {
    /// The state.
    pub state: S,
    /// The stream version it reflects.
    pub version: Version,
    /// The version of the snapshot it started from, if any.
    pub snapshot_version: Option<Version>,
    /// Whether the command id being handled already caused events in the stream.
    pub already_handled: bool,
}

impl<A: Aggregate> AggregateHandler<A>
where
    A::Action: Clone,
{
    /// A handler loading from and appending to `store` (the same store the reducer's effects use).
    pub fn new(aggregate: A, env: A::Environment, store: Arc<dyn EventStore>, executor: Executor) -> Self {
        Self { aggregate, env, store, executor, max_attempts: 16 }
    }

    /// How many times a command is decided again after concurrency conflicts (default 16).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The stream of instance `id`.
    pub fn stream_id(id: &str) -> Result<StreamId, composable_rust_core::StreamIdError> {
        StreamId::for_instance(A::AGGREGATE_TYPE, id)
    }

    /// Loads instance `id` from its snapshot and stream. `handled_command` is the id whose prior
    /// handling should be detected.
    pub async fn load(&self, id: &str, handled_command: Option<&str>) -> Result<Loaded<A::State>, DispatchError> {
        let stream = Self::stream_id(id).map_err(|e| Self::invalid(e.to_string()))?;
        let mut state = self.aggregate.initial_state(id);
        let mut version = Version::INITIAL;
        let mut snapshot_version = None;
        if self.aggregate.snapshot(&state).is_some() {
            if let Some(snap) = self.store.load_snapshot(&stream).await.map_err(|e| Self::store_error(e))? {
                state = self.aggregate.restore(&snap.state, snap.version).map_err(|e| Self::corrupt(&stream, &e))?;
                version = snap.version;
                snapshot_version = Some(snap.version);
            }
        }
        let events = read_stream_to_end(&*self.store, &stream, version.next()).await.map_err(|e| Self::store_error(e))?;
        let mut already_handled = false;
        for event in &events {
            self.aggregate.apply(&mut state, event).map_err(|e| Self::corrupt(&stream, &e))?;
            version = event.stream_version.unwrap_or(version.next());
            if handled_command.is_some() && event.metadata.causation_id.as_deref() == handled_command {
                already_handled = true;
            }
        }
        Ok(Loaded { state, version, snapshot_version, already_handled })
    }

    fn target() -> String {
        A::AGGREGATE_TYPE.to_string()
    }

    fn invalid(reason: String) -> DispatchError {
        DispatchError::InvalidCommand { target: Self::target(), reason }
    }

    fn store_error(source: composable_rust_core::EventStoreError) -> DispatchError {
        DispatchError::Store { target: Self::target(), source }
    }

    fn corrupt(stream: &StreamId, e: &composable_rust_core::CodecError) -> DispatchError {
        Self::store_error(composable_rust_core::EventStoreError::Corrupt { reason: format!("stream {stream}: {e}") })
    }

    fn map_failure(failure: EffectFailure) -> DispatchError {
        match failure {
            EffectFailure::Store(source) => DispatchError::Store { target: Self::target(), source },
            EffectFailure::Bus(source) => DispatchError::Bus { target: Self::target(), source },
            EffectFailure::Dispatch(e) => e,
        }
    }

    /// Saves a snapshot when snapshots are enabled and `snapshot_every` events were appended since
    /// the last one. Loads again so the snapshot reflects exactly the stored version.
    async fn maybe_snapshot(&self, id: &str) {
        if self.aggregate.snapshot(&self.aggregate.initial_state(id)).is_none() {
            return;
        }
        let (Ok(stream), Ok(loaded)) = (Self::stream_id(id), self.load(id, None).await) else { return };
        if loaded.version.0 - loaded.snapshot_version.unwrap_or_default().0 < self.aggregate.snapshot_every() {
            return;
        }
        match self.aggregate.snapshot(&loaded.state) {
            Some(Ok(state)) => {
                let snapshot = Snapshot { stream_id: stream, version: loaded.version, state, taken_at: Utc::now() };
                if let Err(e) = self.store.save_snapshot(snapshot).await {
                    tracing::warn!(error = %e, "could not save snapshot");
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "could not encode snapshot"),
            None => {}
        }
    }

    async fn handle_command(&self, envelope: &CommandEnvelope, command: &A::Action, id: &str) -> Result<CommandOutcome, DispatchError> {
        let cause = envelope.command_id.to_string();
        for attempt in 1..=self.max_attempts {
            let loaded = self.load(id, Some(&cause)).await?;
            if loaded.already_handled {
                tracing::debug!("command already handled, skipping");
                return Ok(CommandOutcome::Duplicate);
            }
            let mut state = loaded.state;
            let mut effects = self.aggregate.reduce(&mut state, command.clone(), &self.env).into_vec();
            stamp(&mut effects, &cause, envelope.correlation_id.as_deref());
            let fed_back: Arc<Mutex<Vec<A::Action>>> = Arc::default();
            let sink = Arc::clone(&fed_back);
            let feedback: Feedback<A::Action> = Arc::new(move |a| sink.lock().push(a));
            let scope = ExecutionScope::deterministic(envelope.command_id, Some(cause.clone())).with_conflict_policy(ConflictPolicy::Abort);
            match self.executor.run(effects, &feedback, &scope).await {
                Ok(()) => {
                    // Actions fed back by the effects (on_success / on_error callbacks) are follow-ups on
                    // the same instance; they run now, in order, with the normal conflict policy.
                    let follow_up_scope = ExecutionScope::deterministic(envelope.command_id, Some(cause.clone()));
                    loop {
                        let next: Vec<A::Action> = std::mem::take(&mut *fed_back.lock());
                        if next.is_empty() {
                            break;
                        }
                        for a in next {
                            let mut effects = self.aggregate.reduce(&mut state, a, &self.env).into_vec();
                            stamp(&mut effects, &cause, envelope.correlation_id.as_deref());
                            if let Err(e) = self.executor.run(effects, &feedback, &follow_up_scope).await {
                                tracing::warn!(error = %e, "follow-up effects failed");
                            }
                        }
                    }
                    self.maybe_snapshot(id).await;
                    return Ok(CommandOutcome::Handled);
                }
                Err(f) if f.is_conflict() => tracing::debug!(attempt, "concurrency conflict, reloading"),
                Err(f) => return Err(Self::map_failure(f)),
            }
        }
        Err(DispatchError::TooManyConflicts { target: Self::target(), stream: format!("{}-{id}", A::AGGREGATE_TYPE), attempts: self.max_attempts })
    }
}

/// Stamps the command's id (as causation) and correlation onto the events the reducer appends, so a
/// redelivered command is recognised in the stream.
fn stamp<A>(effects: &mut [Effect<A>], causation: &str, correlation: Option<&str>) {
    for e in effects {
        match e {
            Effect::EventStore(EventStoreOperation::AppendEvents { events, .. }) => {
                for ev in events {
                    ev.metadata.causation_id = Some(causation.to_string());
                    if ev.metadata.correlation_id.is_none() {
                        ev.metadata.correlation_id = correlation.map(str::to_string);
                    }
                }
            }
            Effect::Sequential(inner) | Effect::Parallel(inner) => stamp(inner, causation, correlation),
            Effect::Cancellable { effect, .. } => stamp(std::slice::from_mut(effect.as_mut()), causation, correlation),
            _ => {}
        }
    }
}

#[async_trait::async_trait]
impl<A: Aggregate> CommandHandler for AggregateHandler<A>
where
    A::Action: Clone + Sync,
{
    fn name(&self) -> &str {
        A::AGGREGATE_TYPE
    }

    async fn handle(&self, envelope: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        let command = envelope.command.downcast_ref::<A::Action>().ok_or_else(|| DispatchError::WrongCommandType {
            target: Self::target(),
            expected: std::any::type_name::<A::Action>(),
            got: envelope.command.type_name(),
        })?;
        let id = A::aggregate_id(command);
        let span = tracing::info_span!("command", aggregate = A::AGGREGATE_TYPE, id = %id, command_id = %envelope.command_id);
        self.handle_command(envelope, command, &id).instrument(span).await
    }
}
