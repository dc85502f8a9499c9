//! The effect executor: the one entry point through which [`crate::Store`],
//! [`crate::AggregateHandler`], [`crate::SagaRunner`] and `TestStore` run effects.
//!
//! # What runs when
//! - **Sequences.** The effects of one `reduce` call (and of an `Effect::Sequential`) run one after
//!   the other, in the order returned. The first failed `Append`, `Publish` or `Dispatch` feeds its
//!   `on_error` action back and skips the rest of its sequence (each skipped effect is reported to the
//!   observer). `Parallel` runs each child as its own sequence, concurrently.
//! - **Appends and the outbox.** An `Append` writes its events and one publish intent per event and
//!   topic of [`Append::publish_to`](composable_rust_core::Append) in one atomic write, then
//!   publishes the stored events (with stream id and version set) and marks the intents done. A
//!   publish that fails after the events were stored does **not** fail the sequence: the event stays
//!   in the outbox and [`crate::outbox`] publishes it. An append that failed publishes nothing.
//! - **Waiting effects.** A `Delay` or `Run` (or a composite holding one) waits on time or the
//!   outside world. Where the scope says so ([`ExecutionScope::detach_waiting`], which the saga
//!   runner uses), the first waiting effect of a sequence and everything after it in that sequence
//!   continue on a task of their own: the caller (and the saga step's acknowledgement) waits only for
//!   the effects before it. Order within the sequence is unchanged.
//! - **Cancellation.** A run starts when [`Executor::run`] / [`Executor::start`] is called (and a
//!   detached part when it is detached), not when its future is first polled: the `Cancellable`
//!   effects it starts with are registered at once, so an `Effect::Cancel` executed afterwards (the
//!   next action of a `Store`, the next delivery of a saga) finds them even if their task has not
//!   run yet.
//! - **Identity.** With a cause ([`ExecutionScope::caused_by`]), every dispatched command id, every
//!   appended or published event id is derived from the cause and the effect's [`EffectPath`], so
//!   handling the same input again lands every effect once, whichever parallel branch finishes first.
//! - **Failures.** Retryable errors are retried with the [`RetryPolicy`]'s backoff on the executor's
//!   clock; a concurrency conflict is never retried here (the command must be decided again).
//!   Failures other than conflicts, and panics in effects or callbacks, are dead-lettered.
//! - **Observability.** Every effect run, failed or skipped is counted, and every store and bus call
//!   timed ([`crate::metrics`]); the events an `Append` or `Publish` writes carry the trace context
//!   of the effect's span unless they carry one already ([`crate::trace_context`], `otel` feature).

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use composable_rust_core::{
    Append, AppendRequest, AppendResult, Callback, CancelInFlight, Clock, CommandEnvelope, CommandOutcome, Dispatch, DispatchError, Effect, EffectId,
    EffectPath, EventBus, EventBusError, EventStore, EventStoreError, ExpectedVersion, GlobalPosition, OutboxIntent, Publish, SerializedEvent, StreamId, Topic,
    Version,
};
use futures::FutureExt;
use futures::future::{AbortRegistration, Abortable, BoxFuture};
use tracing::Instrument;
use uuid::Uuid;

use crate::cancellation::CancellationRegistry;
use crate::clock::SystemClock;
use crate::dead_letter::{DeadLetterSink, InMemoryDeadLetters, dead_letter};
use crate::metrics::Call;
use crate::retry::RetryPolicy;
use crate::router::CommandRouter;
use crate::tracker::Tracker;

/// Where actions produced by effects go (the store's queue, a saga's follow-up steps, a test's
/// received list), with the path of the effect that produced them.
pub type Feedback<A> = Arc<dyn Fn(EffectPath, A) + Send + Sync>;

/// What to do when an append hits a concurrency conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ConflictPolicy {
    /// Feed the append's `on_error` action back (the reducer decides). The default for a `Store`.
    #[default]
    FeedBack,
    /// Return the conflict to the caller without feeding anything back: the aggregate handler then
    /// reloads the stream and decides the command again.
    Abort,
}

/// The context of one run: the cause ids derive from, the conflict policy, the scope of
/// cancellation ids, whether waiting effects run detached.
#[derive(Debug, Clone, Default)]
pub struct ExecutionScope {
    cause: Option<Uuid>,
    causation_id: Option<String>,
    correlation_id: Option<String>,
    conflict: ConflictPolicy,
    cancel_scope: Option<Arc<str>>,
    detach: Option<Tracker>,
    caller_retries: bool,
    deadlines_recorded: bool,
}

/// Namespaces of the ids derived from a cause (UUID v5), one per kind of id.
const COMMAND_IDS: &[u8] = b"command";
const EVENT_IDS: &[u8] = b"event";

impl ExecutionScope {
    /// A scope whose ids are derived from `cause` (a command id, a saga step id) and the effect's
    /// path; `cause` is also stamped as causation id on appended events and dispatched commands.
    pub fn caused_by(cause: Uuid) -> Self {
        Self { cause: Some(cause), causation_id: Some(cause.to_string()), ..Self::default() }
    }

    /// Stamps `correlation_id` on appended events and dispatched commands that carry none.
    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Sets the conflict policy.
    #[must_use]
    pub fn with_conflict_policy(mut self, policy: ConflictPolicy) -> Self {
        self.conflict = policy;
        self
    }

    /// Scopes cancellation ids: `Cancellable`/`Cancel` ids of this run only match ids of the same
    /// scope (a saga instance).
    #[must_use]
    pub fn with_cancel_scope(mut self, scope: &str) -> Self {
        self.cancel_scope = Some(scope.into());
        self
    }

    /// The caller retries what fails retryably (a saga step is redelivered, a dispatched command is
    /// dispatched again): such failures are returned, not dead-lettered. Failures that are final are
    /// dead-lettered either way.
    #[must_use]
    pub fn caller_retries(mut self) -> Self {
        self.caller_retries = true;
        self
    }

    /// The caller stored the run's deadline decisions itself (a saga runner, with the step's
    /// record): the executor leaves `Deadline` and `CancelDeadline` effects alone instead of
    /// starting in-process timers for them.
    #[must_use]
    pub fn deadlines_recorded(mut self) -> Self {
        self.deadlines_recorded = true;
        self
    }

    /// Whether a failure is final for this run's caller (and so is dead-lettered).
    fn is_final(&self, retryable: bool) -> bool {
        !(retryable && self.caller_retries)
    }

    /// Runs each sequence's first waiting effect and the rest of that sequence on a task of its own,
    /// counted by `tracker` (see the module docs).
    #[must_use]
    pub fn detach_waiting(mut self, tracker: Tracker) -> Self {
        self.detach = Some(tracker);
        self
    }

    /// The id of the command dispatched at `path`.
    pub fn command_id(&self, path: &EffectPath) -> Uuid {
        self.derive(COMMAND_IDS, path, None)
    }

    /// The id of event `index` of the append (or publish) at `path`.
    pub fn event_id(&self, path: &EffectPath, index: usize) -> Uuid {
        self.derive(EVENT_IDS, path, Some(index))
    }

    fn derive(&self, kind: &[u8], path: &EffectPath, index: Option<usize>) -> Uuid {
        match self.cause {
            Some(cause) => {
                let mut name = kind.to_vec();
                name.extend(path.to_bytes());
                if let Some(i) = index {
                    name.push(b'#');
                    name.extend(u64::try_from(i).unwrap_or(u64::MAX).to_be_bytes());
                }
                Uuid::new_v5(&cause, &name)
            }
            None => Uuid::new_v4(),
        }
    }

    fn scoped(&self, id: EffectId) -> EffectId {
        match &self.cancel_scope {
            Some(s) => id.scoped(s),
            None => id,
        }
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// The effect needs a backend this executor was not given.
    #[error("a {kind} effect needs {missing}, and this executor has none: give one with Executor::builder().{setter}(..)")]
    NotConfigured {
        /// The effect's kind.
        kind: &'static str,
        /// What is missing (`an event store`).
        missing: &'static str,
        /// The builder method that gives it.
        setter: &'static str,
    },
    /// User code run by the effect (a `Run` future, a callback) panicked.
    #[error("{what} panicked: {message}")]
    Panicked {
        /// Which effect.
        what: String,
        /// The panic message.
        message: String,
    },
}

impl EffectFailure {
    /// Whether this is a concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, EffectFailure::Store(EventStoreError::ConcurrencyConflict { .. }))
    }

    /// Whether running the same effects again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            EffectFailure::Store(e) => e.is_retryable() || matches!(e, EventStoreError::ConcurrencyConflict { .. }),
            EffectFailure::Bus(e) => e.is_retryable(),
            EffectFailure::Dispatch(e) => e.is_retryable(),
            EffectFailure::NotConfigured { .. } | EffectFailure::Panicked { .. } => false,
        }
    }
}

/// What the executor did with an effect that talks to the outside, for observers (tests, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// A publish ran: of a stored event (`stored`, from an append's outbox) or of a notification.
    Publish {
        /// Topic.
        topic: String,
        /// Event type.
        event_type: String,
        /// Event id.
        event_id: Uuid,
        /// Whether the event was stored (an outbox publish).
        stored: bool,
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
        /// Its kind (`append`, ...).
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
    store: Option<Arc<dyn EventStore>>,
    bus: Option<Arc<dyn EventBus>>,
    commands: CommandRouter,
}

/// Executes effects with the store, bus and command handlers it owns. Cheap to clone; clones share
/// everything (the cancellation registry included).
#[derive(Clone)]
pub struct Executor {
    shared: Arc<Shared>,
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("retry", &self.shared.retry)
            .field("store", &self.shared.store.is_some())
            .field("bus", &self.shared.bus.is_some())
            .field("commands", &self.shared.commands)
            .finish_non_exhaustive()
    }
}

impl Default for Executor {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// Builds an [`Executor`].
#[must_use]
pub struct ExecutorBuilder {
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    dead_letters: Arc<dyn DeadLetterSink>,
    observer: Option<Arc<dyn EffectObserver>>,
    store: Option<Arc<dyn EventStore>>,
    bus: Option<Arc<dyn EventBus>>,
    commands: CommandRouter,
}

impl ExecutorBuilder {
    /// The clock for `Delay` and backoff (default: [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The retry policy (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Where dead letters go (default: an [`InMemoryDeadLetters`] of 10,000).
    pub fn dead_letters(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.dead_letters = sink;
        self
    }

    /// An observer of store, bus and dispatch effects.
    pub fn observer(mut self, observer: Arc<dyn EffectObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The event store `Append` effects write to.
    pub fn store(mut self, store: Arc<dyn EventStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The bus stored events and notifications are published to.
    pub fn bus(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// The router `Dispatch` effects go through (share one router between runtimes so handlers
    /// registered later are found).
    pub fn commands(mut self, router: CommandRouter) -> Self {
        self.commands = router;
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
                store: self.store,
                bus: self.bus,
                commands: self.commands,
            }),
        }
    }
}

/// What a run did, for its caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// The global position of the last event stored by the run (not counting detached effects).
    pub last_position: Option<GlobalPosition>,
    /// Appends of the run the store answered as identical retries (`duplicate: true`): their
    /// events were stored before, by an earlier run with the same cause, and nothing was stored now.
    pub duplicate_appends: u32,
}

struct RunState {
    // 0 = nothing stored; positions start at 1.
    last_position: AtomicU64,
    duplicate_appends: AtomicU32,
    /// Cancellable effects registered when their run was started, before the run reached them
    /// ([`Executor::preregister`]), by path.
    preregistered: parking_lot::Mutex<Vec<Preregistered>>,
    shared: Arc<Shared>,
}

/// A cancellable effect registered ahead of running it.
struct Preregistered {
    path: EffectPath,
    id: EffectId,
    token: u64,
    registration: AbortRegistration,
}

impl RunState {
    fn new(executor: &Executor) -> Self {
        Self {
            last_position: AtomicU64::new(0),
            duplicate_appends: AtomicU32::new(0),
            preregistered: parking_lot::Mutex::new(Vec::new()),
            shared: Arc::clone(&executor.shared),
        }
    }

    fn report(&self) -> RunReport {
        let p = self.last_position.load(Ordering::Relaxed);
        RunReport { last_position: (p > 0).then_some(GlobalPosition(p)), duplicate_appends: self.duplicate_appends.load(Ordering::Relaxed) }
    }

    fn take_preregistered(&self, path: &EffectPath) -> Option<Preregistered> {
        let mut pre = self.preregistered.lock();
        let i = pre.iter().position(|p| &p.path == path)?;
        Some(pre.swap_remove(i))
    }
}

impl Drop for RunState {
    /// A run dropped before reaching an effect it registered (cancelled from outside, shut down)
    /// leaves no registration behind.
    fn drop(&mut self) {
        for p in self.preregistered.get_mut().drain(..) {
            self.shared.cancellations.finished(&p.id, p.token);
        }
    }
}

/// Forgets a cancellable's registration when dropped.
struct Registered<'a> {
    registry: &'a CancellationRegistry,
    id: &'a EffectId,
    token: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.finished(self.id, self.token);
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_string())
}

impl Executor {
    /// A builder with defaults: system clock, default retries, no store, no bus, an empty router.
    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder {
            clock: Arc::new(SystemClock),
            retry: RetryPolicy::default(),
            dead_letters: Arc::new(InMemoryDeadLetters::default()),
            observer: None,
            store: None,
            bus: None,
            commands: CommandRouter::default(),
        }
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

    /// The event store, if it has one.
    pub fn store(&self) -> Option<&Arc<dyn EventStore>> {
        self.shared.store.as_ref()
    }

    /// The bus, if it has one.
    pub fn bus(&self) -> Option<&Arc<dyn EventBus>> {
        self.shared.bus.as_ref()
    }

    /// The command router.
    pub fn commands(&self) -> &CommandRouter {
        &self.shared.commands
    }

    /// Runs `effects` as one sequence (see the module docs).
    ///
    /// The run starts when this is called, not when the future is first polled: the cancellable
    /// effects it starts with (the first effect, and the first of every branch of a `Parallel` it
    /// starts with) are registered before this returns, so an `Effect::Cancel` executed after this
    /// call finds them even if the returned future has not run yet (e.g. spawned on a busy runtime).
    pub fn run<'a, A: Send + 'static>(
        &'a self,
        effects: Vec<Effect<A>>,
        feedback: &'a Feedback<A>,
        scope: &'a ExecutionScope,
    ) -> impl Future<Output = Result<RunReport, EffectFailure>> + Send + 'a {
        let mut effects = effects;
        let state = RunState::new(self);
        let timers = self.start_timers(&mut effects, scope, &state);
        if let Some(first) = effects.first() {
            self.preregister(first, scope, &EffectPath::root().child(0), &state, None);
        }
        async move {
            let main = self.run_sequence(effects, feedback, scope, EffectPath::root(), 0, &state);
            let result = self.with_timers(main, timers, feedback, scope, &state).await;
            result?;
            Ok(state.report())
        }
    }

    /// Like [`Executor::run`], for a caller that spawns the run: the returned future owns what it
    /// needs. Cancellable effects the run starts with are registered before this returns.
    pub fn start<A: Send + 'static>(
        &self,
        effects: Vec<Effect<A>>,
        feedback: Feedback<A>,
        scope: ExecutionScope,
    ) -> BoxFuture<'static, Result<RunReport, EffectFailure>> {
        let mut effects = effects;
        let state = RunState::new(self);
        let timers = self.start_timers(&mut effects, &scope, &state);
        if let Some(first) = effects.first() {
            self.preregister(first, &scope, &EffectPath::root().child(0), &state, None);
        }
        let executor = self.clone();
        async move {
            let main = executor.run_sequence(effects, &feedback, &scope, EffectPath::root(), 0, &state);
            executor.with_timers(main, timers, &feedback, &scope, &state).await?;
            Ok(state.report())
        }
        .boxed()
    }

    /// Takes the run's deadline decisions out of `effects` (leaving `Effect::None` in their place)
    /// and, unless the caller recorded them, turns them into in-process timers: a cancellation
    /// cancels the timer of that name now; a schedule becomes a delay, cancellable by the name and
    /// registered now, replacing a running timer of the same name. The decisions take effect before
    /// any other effect runs, as under the saga runner (see `composable_rust_core::deadline`).
    fn start_timers<A: Send + 'static>(&self, effects: &mut [Effect<A>], scope: &ExecutionScope, state: &RunState) -> Vec<(EffectPath, Effect<A>)> {
        if scope.deadlines_recorded || !composable_rust_core::deadline::any(effects) {
            return Vec::new();
        }
        let mut taken = Vec::new();
        take_deadlines(effects, &EffectPath::root(), &mut taken);
        // Net per name, in the order names were first decided: the last decision wins.
        let mut net: Vec<(EffectPath, Effect<A>)> = Vec::new();
        for (path, decision) in taken {
            let name = deadline_name(&decision);
            match net.iter().position(|(_, d)| deadline_name(d) == name) {
                Some(k) => net[k] = (path, decision),
                None => net.push((path, decision)),
            }
        }
        let now = self.shared.clock.now();
        let mut timers = Vec::new();
        for (path, decision) in net {
            if deadline_name(&decision).is_empty() {
                // Refused as the saga runner refuses it: a dead letter, the rest of the run stands.
                dead_letter(&*self.shared.dead_letters, "deadline".into(), "a deadline needs a non-empty name; this one was ignored".into(), 1, None);
                continue;
            }
            match decision {
                Effect::CancelDeadline(name) => {
                    let id = scope.scoped(timer_id(&name));
                    let n = self.shared.cancellations.cancel(&id);
                    tracing::debug!(deadline = %name, cancelled = n, "deadline cancelled");
                }
                Effect::Deadline(d) => {
                    let timer = Effect::Cancellable {
                        id: timer_id(&d.name),
                        in_flight: CancelInFlight::Cancel,
                        effect: Box::new(Effect::Delay { duration: d.due.remaining(now), action: Box::new(d.action) }),
                    };
                    self.preregister(&timer, scope, &path, state, None);
                    timers.push((path, timer));
                }
                _ => {}
            }
        }
        timers
    }

    /// Runs `main` with the run's timers beside it; the run ends when both did, with `main`'s result.
    /// When the scope detaches waiting effects, the timers run detached instead.
    async fn with_timers<A: Send + 'static>(
        &self,
        main: impl Future<Output = Result<(), EffectFailure>>,
        timers: Vec<(EffectPath, Effect<A>)>,
        feedback: &Feedback<A>,
        scope: &ExecutionScope,
        state: &RunState,
    ) -> Result<(), EffectFailure> {
        if timers.is_empty() {
            return main.await;
        }
        if let Some(tracker) = &scope.detach {
            for (path, timer) in timers {
                let guard = tracker.enter();
                let (executor, feedback, scope) = (self.clone(), Arc::clone(feedback), scope.clone());
                // The timer's registration moves to the task's own run state.
                let own = RunState::new(self);
                self.preregister(&timer, &scope, &path, &own, Some(state));
                let state = own;
                tokio::spawn(
                    async move {
                        let _ = executor.run_one(timer, &feedback, &scope, path, &state).await;
                        drop(guard);
                    }
                    .in_current_span(),
                );
            }
            return main.await;
        }
        let timers = futures::future::join_all(timers.into_iter().map(|(path, timer)| self.run_one(timer, feedback, scope, path, state)));
        let (result, _) = futures::future::join(main, timers).await;
        result
    }

    /// Registers the cancellable effects that start as soon as `effect` (at `path`) starts: itself if
    /// it is `Cancellable` (and what its inner effect starts with), the first effect of a
    /// `Sequential`, every branch of a `Parallel`. `run_one` then uses these registrations instead of
    /// registering when it gets there, so a `Cancel` that runs in between is not lost. A
    /// registration already made in `from` (the run that is handing these effects over) is moved,
    /// not made twice.
    fn preregister<A: Send + 'static>(&self, effect: &Effect<A>, scope: &ExecutionScope, path: &EffectPath, state: &RunState, from: Option<&RunState>) {
        match effect {
            Effect::Cancellable { id, in_flight, effect } => {
                let pre = from.and_then(|f| f.take_preregistered(path)).unwrap_or_else(|| {
                    let id = scope.scoped(id.clone());
                    let (token, registration) = self.shared.cancellations.register(&id, *in_flight);
                    Preregistered { path: path.clone(), id, token, registration }
                });
                state.preregistered.lock().push(pre);
                self.preregister(effect, scope, &path.child(0), state, from);
            }
            Effect::Parallel(children) => {
                for (j, child) in children.iter().enumerate() {
                    self.preregister(child, scope, &path.child(j), state, from);
                }
            }
            Effect::Sequential(children) => {
                if let Some(first) = children.first() {
                    self.preregister(first, scope, &path.child(0), state, from);
                }
            }
            _ => {}
        }
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

    /// Runs `effects` in order; the k-th has path `base/first+k`.
    fn run_sequence<'a, A: Send + 'static>(
        &'a self,
        effects: Vec<Effect<A>>,
        feedback: &'a Feedback<A>,
        scope: &'a ExecutionScope,
        base: EffectPath,
        first: usize,
        state: &'a RunState,
    ) -> BoxFuture<'a, Result<(), EffectFailure>> {
        async move {
            let mut effects = effects.into_iter().enumerate();
            while let Some((k, effect)) = effects.next() {
                if let (Some(tracker), true) = (&scope.detach, effect.waits()) {
                    let rest: Vec<Effect<A>> = std::iter::once(effect).chain(effects.map(|(_, e)| e)).collect();
                    self.detach(rest, feedback, scope, tracker, base, first + k, state);
                    return Ok(());
                }
                let path = base.child(first + k);
                let span = tracing::info_span!("effect", kind = effect.kind(), path = %path);
                let result = self.run_one(effect, feedback, scope, path, state).instrument(span).await;
                if let Err(failure) = result {
                    for (_, skipped) in effects {
                        tracing::debug!(kind = skipped.kind(), error = %failure, "effect skipped: an earlier effect of its sequence failed");
                        crate::metrics::effect_skipped(skipped.kind());
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
    fn detach<A: Send + 'static>(
        &self,
        rest: Vec<Effect<A>>,
        feedback: &Feedback<A>,
        scope: &ExecutionScope,
        tracker: &Tracker,
        base: EffectPath,
        first: usize,
        from: &RunState,
    ) {
        let guard = tracker.enter();
        let executor = self.clone();
        let feedback = Arc::clone(feedback);
        let mut scope = scope.clone();
        scope.detach = None;
        // Nobody waits for detached effects: what fails in them is final, and dead-lettered.
        scope.caller_retries = false;
        // The detached effects start now: a Cancel handled after this step (the next delivery) must
        // find the cancellable effects they start with, even before the task below first runs.
        let state = RunState::new(self);
        if let Some(head) = rest.first() {
            self.preregister(head, &scope, &base.child(first), &state, Some(from));
        }
        tokio::spawn(
            async move {
                let run = AssertUnwindSafe(executor.run_sequence(rest, &feedback, &scope, base, first, &state)).catch_unwind();
                match run.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "detached effects stopped"),
                    Err(panic) => {
                        dead_letter(&*executor.shared.dead_letters, "detached effects".into(), panic_message(&*panic), 1, None);
                    }
                }
                drop(guard);
            }
            .in_current_span(),
        );
    }

    fn feed<T, A>(&self, what: &str, callback: Option<Callback<T, A>>, value: T, path: &EffectPath, feedback: &Feedback<A>) {
        let Some(cb) = callback else { return };
        match std::panic::catch_unwind(AssertUnwindSafe(|| cb(value))) {
            Ok(action) => feedback(path.clone(), action),
            Err(panic) => dead_letter(&*self.shared.dead_letters, format!("callback of {what}"), panic_message(&*panic), 1, None),
        }
    }

    fn run_one<'a, A: Send + 'static>(
        &'a self,
        effect: Effect<A>,
        feedback: &'a Feedback<A>,
        scope: &'a ExecutionScope,
        path: EffectPath,
        state: &'a RunState,
    ) -> BoxFuture<'a, Result<(), EffectFailure>> {
        async move {
            crate::metrics::effect_started(effect.kind());
            match effect {
                // Deadlines are taken out by `start_timers`, unless the caller recorded them: nothing
                // to do here either way.
                Effect::None | Effect::Deadline(_) | Effect::CancelDeadline(_) => Ok(()),
                Effect::Append(append) => self.append(append, feedback, scope, &path, state).await,
                Effect::Publish(publish) => self.publish_notification(publish, feedback, scope, &path).await,
                Effect::Dispatch(dispatch) => self.dispatch(dispatch, feedback, scope, &path).await,
                Effect::Stream(stream) => {
                    // The k-th action of the stream is fed back from path/k: a saga records each as its
                    // own follow-up step, with an id that depends on its place in the stream only.
                    let feed_all = async {
                        let mut stream = std::pin::pin!(stream);
                        let mut k = 0;
                        while let Some(action) = futures::StreamExt::next(&mut stream).await {
                            feedback(path.child(k), action);
                            k += 1;
                        }
                    };
                    AssertUnwindSafe(feed_all).catch_unwind().await.map_err(|panic| {
                        crate::metrics::effect_failed("stream");
                        let failure = EffectFailure::Panicked { what: format!("stream effect at {path}"), message: panic_message(&*panic) };
                        dead_letter(&*self.shared.dead_letters, format!("stream effect at {path}"), failure.to_string(), 1, None);
                        failure
                    })
                }
                Effect::Run(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
                    Ok(action) => {
                        if let Some(a) = action {
                            feedback(path, a);
                        }
                        Ok(())
                    }
                    Err(panic) => {
                        crate::metrics::effect_failed("run");
                        let failure = EffectFailure::Panicked { what: format!("run effect at {path}"), message: panic_message(&*panic) };
                        dead_letter(&*self.shared.dead_letters, format!("run effect at {path}"), failure.to_string(), 1, None);
                        Err(failure)
                    }
                },
                Effect::Sleep(duration) => {
                    self.shared.clock.sleep(duration).await;
                    Ok(())
                }
                Effect::Delay { duration, action } => {
                    self.shared.clock.sleep(duration).await;
                    feedback(path, *action);
                    Ok(())
                }
                Effect::Sequential(inner) => self.run_sequence(inner, feedback, scope, path, 0, state).await,
                Effect::Parallel(inner) => {
                    let branches = inner.into_iter().enumerate().map(|(j, e)| self.run_sequence(vec![e], feedback, scope, path.clone(), j, state));
                    let results = futures::future::join_all(branches).await;
                    results.into_iter().collect::<Result<Vec<()>, _>>().map(|_| ())
                }
                Effect::Cancellable { id, in_flight, effect } => {
                    let id = scope.scoped(id);
                    let (token, registration) = match state.take_preregistered(&path) {
                        Some(pre) => (pre.token, pre.registration),
                        None => self.shared.cancellations.register(&id, in_flight),
                    };
                    // Unregistered however this ends, also when an enclosing cancellable aborts us
                    // mid-await (the future is dropped then).
                    let _registered = Registered { registry: &self.shared.cancellations, id: &id, token };
                    let outcome = Abortable::new(self.run_sequence(vec![*effect], feedback, scope, path, 0, state), registration).await;
                    outcome.unwrap_or_else(|_aborted| {
                        tracing::debug!(id = id.as_str(), "cancellable effect cancelled");
                        Ok(())
                    })
                }
                Effect::Cancel(id) => {
                    let id = scope.scoped(id);
                    let n = self.shared.cancellations.cancel(&id);
                    tracing::debug!(id = id.as_str(), cancelled = n, "cancel");
                    Ok(())
                }
            }
        }
        .boxed()
    }

    fn stamp(scope: &ExecutionScope, event: &mut SerializedEvent) {
        if event.metadata.causation_id.is_none() {
            event.metadata.causation_id.clone_from(&scope.causation_id);
        }
        if event.metadata.correlation_id.is_none() {
            event.metadata.correlation_id.clone_from(&scope.correlation_id);
        }
        crate::trace_context::inject_current(&mut event.metadata);
    }

    async fn append<A: Send + 'static>(
        &self,
        append: Append<A>,
        feedback: &Feedback<A>,
        scope: &ExecutionScope,
        path: &EffectPath,
        state: &RunState,
    ) -> Result<(), EffectFailure> {
        let Some(store) = &self.shared.store else {
            return Err(EffectFailure::NotConfigured { kind: "append", missing: "an event store", setter: "store" });
        };
        let Append { stream_id, expected_version, mut events, publish_to, on_success, on_error } = append;
        for (k, event) in events.iter_mut().enumerate() {
            if scope.cause.is_some() {
                event.event_id = scope.event_id(path, k);
            }
            Self::stamp(scope, event);
        }
        let outbox: Vec<OutboxIntent> =
            events.iter().flat_map(|e| publish_to.iter().map(|t| OutboxIntent { topic: t.clone(), event_id: e.event_id })).collect();
        let request = AppendRequest { stream_id, expected_version, events, outbox, inbox: None, deadlines: Vec::new() };
        let what = || format!("append to {}", request.stream_id);
        let (outcome, attempts) = self.with_retry(&what, || crate::metrics::timed(Call::Append, store.append(request.clone()))).await;
        self.observe(|| EffectRecord::Append {
            stream_id: request.stream_id.clone(),
            expected_version: request.expected_version,
            event_types: request.events.iter().map(|e| e.event_type.clone()).collect(),
            outbox: request.outbox.clone(),
            outcome: outcome.clone(),
        });
        match outcome {
            Ok(result) => {
                if result.duplicate {
                    state.duplicate_appends.fetch_add(1, Ordering::Relaxed);
                } else {
                    crate::metrics::events_appended(request.events.len());
                }
                let last = result.first_position.0 + request.events.len() as u64 - 1;
                state.last_position.fetch_max(last, Ordering::Relaxed);
                if !publish_to.is_empty() {
                    self.publish_stored(store, &request, &result, &publish_to).await;
                }
                self.feed("append", on_success, result, path, feedback);
                Ok(())
            }
            Err(error) => {
                let conflict = matches!(error, EventStoreError::ConcurrencyConflict { .. });
                if conflict && scope.conflict == ConflictPolicy::Abort {
                    return Err(error.into());
                }
                if conflict {
                    crate::metrics::append_conflict();
                    tracing::info!(error = %error, "append conflicted");
                } else {
                    crate::metrics::effect_failed("append");
                    if scope.is_final(error.is_retryable()) {
                        dead_letter(&*self.shared.dead_letters, what(), error.to_string(), attempts, request.events.first().cloned());
                    }
                }
                self.feed("append", on_error, error.clone(), path, feedback);
                Err(error.into())
            }
        }
    }

    /// Publishes the events an append stored, as stored, and marks their outbox intents done. A
    /// failure leaves the intent for the relay; it never fails the sequence.
    async fn publish_stored(&self, store: &Arc<dyn EventStore>, request: &AppendRequest, result: &AppendResult, topics: &[Topic]) {
        let Some(bus) = &self.shared.bus else {
            tracing::warn!(stream = %request.stream_id, "this executor has no bus: the events stay in the outbox until a relay publishes them");
            return;
        };
        for (k, event) in request.events.iter().enumerate() {
            let mut event = event.clone();
            event.stream_id = Some(request.stream_id.clone());
            event.stream_version = Some(Version(result.first_version.0 + k as u64));
            for topic in topics {
                let what = || format!("publish of stored {} {} to {topic}", event.event_type, event.event_id);
                let (outcome, _) = self.with_retry(&what, || crate::metrics::timed(Call::Publish, bus.publish(topic.as_str(), &event))).await;
                self.observe(|| EffectRecord::Publish {
                    topic: topic.to_string(),
                    event_type: event.event_type.clone(),
                    event_id: event.event_id,
                    stored: true,
                    outcome: outcome.clone(),
                });
                match outcome {
                    Ok(()) => {
                        crate::metrics::event_published();
                        if let Err(e) = store.mark_published(event.event_id, topic).await {
                            // Not fatal: the relay publishes it again (at least once; consumers de-duplicate).
                            tracing::warn!(error = %e, event_id = %event.event_id, "could not mark outbox entry published");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "{}: left in the outbox, the relay will publish it", what()),
                }
            }
        }
    }

    async fn publish_notification<A: Send + 'static>(
        &self,
        publish: Publish<A>,
        feedback: &Feedback<A>,
        scope: &ExecutionScope,
        path: &EffectPath,
    ) -> Result<(), EffectFailure> {
        let Some(bus) = &self.shared.bus else {
            return Err(EffectFailure::NotConfigured { kind: "publish", missing: "an event bus", setter: "bus" });
        };
        let Publish { topic, mut event, on_error } = publish;
        if scope.cause.is_some() {
            event.event_id = scope.event_id(path, 0);
        }
        Self::stamp(scope, &mut event);
        let what = || format!("publish {} {} to {topic}", event.event_type, event.event_id);
        let (outcome, attempts) = self.with_retry(&what, || crate::metrics::timed(Call::Publish, bus.publish(topic.as_str(), &event))).await;
        self.observe(|| EffectRecord::Publish {
            topic: topic.to_string(),
            event_type: event.event_type.clone(),
            event_id: event.event_id,
            stored: false,
            outcome: outcome.clone(),
        });
        match outcome {
            Ok(()) => {
                crate::metrics::event_published();
                Ok(())
            }
            Err(error) => {
                crate::metrics::effect_failed("publish");
                if scope.is_final(error.is_retryable()) {
                    dead_letter(&*self.shared.dead_letters, what(), error.to_string(), attempts, Some(event));
                }
                self.feed("publish", on_error, error.clone(), path, feedback);
                Err(error.into())
            }
        }
    }

    async fn dispatch<A: Send + 'static>(
        &self,
        dispatch: Dispatch<A>,
        feedback: &Feedback<A>,
        scope: &ExecutionScope,
        path: &EffectPath,
    ) -> Result<(), EffectFailure> {
        let Dispatch { command, correlation_id, on_error } = dispatch;
        let envelope = CommandEnvelope {
            command_id: scope.command_id(path),
            correlation_id: correlation_id.or_else(|| scope.correlation_id.clone()),
            causation_id: scope.causation_id.clone(),
            command,
        };
        let router = &self.shared.commands;
        let target = router.target_name(&envelope);
        let what = || format!("dispatch of {:?} to {target}", envelope.command);
        let handle = || async {
            let handler = router.route(&envelope)?;
            match AssertUnwindSafe(handler.handle(&envelope)).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => Err(DispatchError::Panicked { target: handler.name().to_string(), message: panic_message(&*panic) }),
            }
        };
        let (outcome, attempts) = self.with_retry(&what, handle).await;
        crate::metrics::command_dispatched(&outcome);
        self.observe(|| EffectRecord::Dispatch {
            target: target.clone(),
            command: format!("{:?}", envelope.command),
            command_id: envelope.command_id,
            outcome: outcome.clone(),
        });
        match outcome {
            Ok(_) => Ok(()),
            Err(e) => {
                if matches!(e, DispatchError::Rejected { .. }) {
                    tracing::info!(error = %e, "command rejected");
                } else {
                    crate::metrics::effect_failed("dispatch");
                    if scope.is_final(e.is_retryable()) {
                        dead_letter(&*self.shared.dead_letters, what(), e.to_string(), attempts, None);
                    }
                }
                self.feed("dispatch", on_error, e.clone(), path, feedback);
                Err(e.into())
            }
        }
    }
}

/// The cancellation id of the in-process timer of deadline `name` (scoped like any id).
fn timer_id(name: &str) -> EffectId {
    EffectId::from(format!("deadline\u{0}{name}"))
}

fn deadline_name<A>(decision: &Effect<A>) -> &str {
    match decision {
        Effect::Deadline(d) => &d.name,
        Effect::CancelDeadline(name) => name,
        _ => "",
    }
}

/// Moves every `Deadline` / `CancelDeadline` of the tree into `out` (depth first, in tree order),
/// with its path, leaving `Effect::None` behind.
fn take_deadlines<A>(effects: &mut [Effect<A>], base: &EffectPath, out: &mut Vec<(EffectPath, Effect<A>)>) {
    for (k, effect) in effects.iter_mut().enumerate() {
        let path = base.child(k);
        match effect {
            Effect::Deadline(_) | Effect::CancelDeadline(_) => out.push((path, std::mem::replace(effect, Effect::None))),
            Effect::Parallel(inner) | Effect::Sequential(inner) => take_deadlines(inner, &path, out),
            Effect::Cancellable { effect, .. } => take_deadlines(std::slice::from_mut(effect.as_mut()), &path, out),
            _ => {}
        }
    }
}
