//! [`TestStore`]: deterministic, exhaustive tests of a reducer, in the style of Point-Free's
//! Composable Architecture.
//!
//! - [`TestStore::send`] reduces an action and asserts the **whole** state equals the state before,
//!   mutated by your closure; a mismatch fails with a line diff.
//! - Effects run for real through the runtime's [`Executor`], the same entry point the production
//!   `Store` uses (same order, outbox and failure rules), on a [`TestClock`], against an in-memory
//!   store and bus (or the ones you give). Each action's effects run on a task of their own, as in
//!   the `Store` and as a saga runner runs a step's waiting effects, so a `Delay` never holds back
//!   later actions. Dispatched commands go to the handlers you register
//!   ([`TestStore::commands`]); commands of other types are accepted and recorded
//!   ([`TestStore::dispatched`]).
//! - Time is virtual only: [`TestStore::receive`] never waits on the wall clock. If no action was
//!   fed back once every running effect is blocked, it fails at once and names the effects still
//!   running (advance the clock with [`TestStore::advance`]).
//! - Ending the test with unreceived actions, effects still running (named) or an effect that
//!   panicked fails it. [`TestStore::non_exhaustive`] relaxes the first rule.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, Location};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use composable_rust_core::{CommandEnvelope, CommandHandler, CommandOutcome, DispatchError, Effect, Effects, EventBus, EventStore, Reducer};
use composable_rust_runtime::{
    CommandRouter, DeadLetterSink, EffectFailure, EffectObserver, EffectRecord, ExecutionScope, Executor, Feedback, InMemoryDeadLetters, RetryPolicy,
};
use futures::FutureExt;
use parking_lot::Mutex;

use crate::clock::{TestClock, settle};
use crate::diff::debug_diff;
use crate::{InMemoryEventBus, InMemoryEventStore};

#[derive(Default)]
struct Recorder {
    records: Mutex<Vec<EffectRecord>>,
}

impl EffectObserver for Recorder {
    fn observe(&self, record: EffectRecord) {
        self.records.lock().push(record);
    }
}

/// Accepts every command routed to it and records it (the default for command types the test
/// registered no handler for).
#[derive(Default)]
struct AcceptAll {
    commands: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl CommandHandler for AcceptAll {
    fn name(&self) -> &'static str {
        "test-store"
    }

    async fn handle(&self, envelope: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        self.commands.lock().push(format!("{:?}", envelope.command));
        Ok(CommandOutcome::HANDLED)
    }
}

struct Shared<A> {
    received: Mutex<VecDeque<A>>,
    /// Effect runs still going, by run number: what they are.
    running: Mutex<BTreeMap<u64, String>>,
    panics: Mutex<Vec<String>>,
    next_run: AtomicU64,
}

/// A store for tests. See the module docs.
pub struct TestStore<R: Reducer>
where
    R::State: Clone + PartialEq + Debug,
    R::Action: PartialEq + Debug,
{
    reducer: Arc<R>,
    env: R::Environment,
    state: R::State,
    shared: Arc<Shared<R::Action>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    executor: Executor,
    router: CommandRouter,
    accept_all: Arc<AcceptAll>,
    clock: TestClock,
    recorder: Arc<Recorder>,
    dead_letters: Arc<InMemoryDeadLetters>,
    exhaustive: bool,
}

impl<R: Reducer> TestStore<R>
where
    R::State: Clone + PartialEq + Debug,
    R::Action: PartialEq + Debug,
{
    /// A test store with a fresh [`TestClock`], an in-memory store and bus, and no retries
    /// (failures show up at once).
    pub fn new(initial_state: R::State, reducer: R, env: R::Environment) -> Self {
        Self::with_clock(initial_state, reducer, env, TestClock::new())
    }

    /// A test store on a given clock (share it with the environment if the reducer reads time).
    pub fn with_clock(initial_state: R::State, reducer: R, env: R::Environment, clock: TestClock) -> Self {
        let recorder = Arc::new(Recorder::default());
        let router = CommandRouter::new();
        let accept_all = Arc::new(AcceptAll::default());
        router.set_fallback(Arc::clone(&accept_all) as Arc<dyn CommandHandler>);
        let dead_letters = Arc::new(InMemoryDeadLetters::default());
        let executor = Self::build_executor(&clock, &recorder, &router, &dead_letters, Arc::new(InMemoryEventStore::new()), Arc::new(InMemoryEventBus::new()));
        Self {
            reducer: Arc::new(reducer),
            env,
            state: initial_state,
            shared: Arc::new(Shared {
                received: Mutex::new(VecDeque::new()),
                running: Mutex::new(BTreeMap::new()),
                panics: Mutex::new(Vec::new()),
                next_run: AtomicU64::new(0),
            }),
            tasks: Vec::new(),
            executor,
            router,
            accept_all,
            clock,
            recorder,
            dead_letters,
            exhaustive: true,
        }
    }

    fn build_executor(
        clock: &TestClock,
        recorder: &Arc<Recorder>,
        router: &CommandRouter,
        dead_letters: &Arc<InMemoryDeadLetters>,
        store: Arc<dyn EventStore>,
        bus: Arc<dyn EventBus>,
    ) -> Executor {
        Executor::builder()
            .dead_letters(Arc::clone(dead_letters) as Arc<dyn DeadLetterSink>)
            .clock(Arc::new(clock.clone()))
            .retry(RetryPolicy::NONE)
            .observer(Arc::clone(recorder) as Arc<dyn EffectObserver>)
            .commands(router.clone())
            .store(store)
            .bus(bus)
            .build()
    }

    /// Runs effects against `store` and `bus` instead of fresh in-memory ones.
    #[must_use]
    pub fn with_backends(mut self, store: Arc<dyn EventStore>, bus: Arc<dyn EventBus>) -> Self {
        self.executor = Self::build_executor(&self.clock, &self.recorder, &self.router, &self.dead_letters, store, bus);
        self
    }

    /// Allows ending the test with actions not received and sending while some are queued.
    #[must_use]
    pub fn non_exhaustive(mut self) -> Self {
        self.exhaustive = false;
        self
    }

    /// The clock driving `Delay` and backoff.
    pub fn clock(&self) -> &TestClock {
        &self.clock
    }

    /// The router dispatched commands go through: register the handlers the test needs (e.g. an
    /// `AggregateHandler` built on [`TestStore::executor`]).
    pub fn commands(&self) -> &CommandRouter {
        &self.router
    }

    /// The executor effects run on (its store and bus are the test's).
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Dead letters recorded by the effects (failed for good, panicked callbacks).
    pub fn dead_letters(&self) -> Vec<composable_rust_runtime::DeadLetter> {
        self.dead_letters.letters()
    }

    /// Commands of types with no registered handler, accepted and recorded, `Debug`-rendered.
    pub fn dispatched(&self) -> Vec<String> {
        self.accept_all.commands.lock().clone()
    }

    /// The current state.
    pub fn state(&self) -> &R::State {
        &self.state
    }

    /// The environment.
    pub fn environment(&self) -> &R::Environment {
        &self.env
    }

    /// Changes the environment for the rest of the test (a clock set to another time, a dependency
    /// that now fails): later actions are reduced with it.
    pub fn environment_mut(&mut self) -> &mut R::Environment {
        &mut self.env
    }

    /// Store, bus and dispatch effects executed (or skipped) so far, in order.
    pub fn effect_log(&self) -> Vec<EffectRecord> {
        self.recorder.records.lock().clone()
    }

    /// `(topic, event_type)` of every successful publish so far (stored events and notifications).
    pub fn published(&self) -> Vec<(String, String)> {
        self.effect_log()
            .into_iter()
            .filter_map(|r| match r {
                EffectRecord::Publish { topic, event_type, outcome: Ok(()), .. } => Some((topic, event_type)),
                _ => None,
            })
            .collect()
    }

    /// Sends `action`, asserting that the state afterwards equals the state before mutated by
    /// `expected`. Its effects start running. A failure is reported at the caller's line.
    #[track_caller]
    pub fn send(&mut self, action: R::Action, expected: impl FnOnce(&mut R::State)) -> &mut Self {
        let at = Location::caller();
        if self.exhaustive {
            let queued = self.shared.received.lock();
            assert!(
                queued.is_empty(),
                "{at}: send({action:?}) while {} fed-back action(s) were not received yet: {:?}\nreceive them first (or use non_exhaustive())",
                queued.len(),
                *queued
            );
        }
        let description = format!("send({action:?})");
        self.reduce_and_assert(action, expected, &description, at);
        self
    }

    /// Takes the next action fed back by an effect (letting running effects make progress on
    /// virtual time), asserts it equals `action`, reduces it and asserts the state like
    /// [`TestStore::send`]. A failure message starts with the caller's file and line.
    #[track_caller]
    pub fn receive(&mut self, action: R::Action, expected: impl FnOnce(&mut R::State)) -> impl Future<Output = &mut Self> {
        let at = Location::caller();
        async move {
            match self.next_received().await {
                None => panic!("{at}: receive({action:?}): no action was fed back\n{}", self.running_report()),
                Some(got) if got != action => {
                    panic!("{at}: receive: the next action fed back differs from the expected one\n{}", debug_diff(&action, &got))
                }
                Some(got) => {
                    let description = format!("receive({got:?})");
                    self.reduce_and_assert(got, expected, &description, at);
                }
            }
            self
        }
    }

    /// Like [`TestStore::receive`], for the next action that satisfies `matches` (`matches!(a,
    /// Action::Loaded(_))`): useful when the action carries values the test cannot predict.
    #[track_caller]
    pub fn receive_matching(
        &mut self,
        what: &str,
        matches: impl FnOnce(&R::Action) -> bool,
        expected: impl FnOnce(&mut R::State),
    ) -> impl Future<Output = &mut Self> {
        let at = Location::caller();
        let what = what.to_string();
        async move {
            match self.next_received().await {
                None => panic!("{at}: receive_matching({what}): no action was fed back\n{}", self.running_report()),
                Some(got) if !matches(&got) => panic!("{at}: receive_matching({what}): the next action fed back does not match: {got:#?}"),
                Some(got) => {
                    let description = format!("receive({got:?})");
                    self.reduce_and_assert(got, expected, &description, at);
                }
            }
            self
        }
    }

    /// Drops the actions fed back and not received yet (they are not reduced).
    pub async fn skip_received_actions(&mut self) -> &mut Self {
        settle().await;
        self.shared.received.lock().clear();
        self
    }

    /// Cancels every effect still running.
    pub async fn skip_in_flight_effects(&mut self) -> &mut Self {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        settle().await;
        self.shared.running.lock().clear();
        self
    }

    /// Moves the [`TestClock`] forward, running delayed effects that come due.
    pub async fn advance(&mut self, by: Duration) {
        self.clock.advance(by).await;
    }

    /// Lets running effects make progress until they finish or block on the clock.
    pub async fn settle(&self) {
        settle().await;
    }

    /// Asserts nothing is pending: every fed-back action received, no effect running, no panic.
    pub async fn finish(mut self) {
        settle().await;
        self.check_finished();
        self.exhaustive = false;
        self.shared.running.lock().clear();
        self.shared.panics.lock().clear();
        self.dead_letters = Arc::new(InMemoryDeadLetters::default());
    }

    async fn next_received(&self) -> Option<R::Action> {
        if let Some(a) = self.shared.received.lock().pop_front() {
            return Some(a);
        }
        // Virtual time only: effects that can make progress do so now; what is still running
        // afterwards is blocked (on the clock, or on something that never answers).
        settle().await;
        self.shared.received.lock().pop_front()
    }

    fn running_report(&self) -> String {
        use std::fmt::Write as _;
        let running = self.shared.running.lock();
        let panics = self.shared.panics.lock();
        let mut out = String::new();
        if running.is_empty() {
            out.push_str("no effect is running");
        } else {
            let _ = write!(out, "{} effect run(s) still running ({} sleeping on the TestClock: advance it?):", running.len(), self.clock.pending_sleepers());
            for what in running.values() {
                let _ = write!(out, "\n  - {what}");
            }
        }
        for p in panics.iter() {
            let _ = write!(out, "\n  an effect panicked: {p}");
        }
        out
    }

    #[track_caller]
    fn reduce_and_assert(&mut self, action: R::Action, expected: impl FnOnce(&mut R::State), description: &str, at: &Location<'_>) {
        let mut expected_state = self.state.clone();
        expected(&mut expected_state);
        let effects = self.reducer.reduce(&mut self.state, action, &self.env);
        assert!(expected_state == self.state, "{at}: {description}: state differs from the expected state\n{}", debug_diff(&expected_state, &self.state));
        self.spawn(effects, description);
    }

    fn spawn(&mut self, effects: Effects<R::Action>, cause: &str) {
        if effects.iter().all(|e| matches!(e, Effect::None)) {
            return;
        }
        let run = self.shared.next_run.fetch_add(1, Ordering::Relaxed);
        let what = format!("{} (effects of {cause})", effects.iter().map(Effect::describe).collect::<Vec<_>>().join(", then "));
        self.shared.running.lock().insert(run, what.clone());
        let shared = Arc::clone(&self.shared);
        let executor = self.executor.clone();
        self.tasks.retain(|t| !t.is_finished());
        let sink = Arc::clone(&shared);
        let feedback: Feedback<R::Action> = Arc::new(move |_path, a| sink.received.lock().push_back(a));
        // Started now, as the `Store` does: a cancel sent next finds the cancellable effects it
        // starts with even before this task runs.
        let work = executor.start(effects.into_vec(), feedback, ExecutionScope::default());
        self.tasks.push(tokio::spawn(async move {
            let outcome = AssertUnwindSafe(work).catch_unwind().await;
            match outcome {
                Err(panic) => {
                    let message =
                        panic.downcast_ref::<&str>().map(|s| (*s).to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
                    shared.panics.lock().push(format!("{what}: {message}"));
                }
                Ok(Err(failure @ EffectFailure::Panicked { .. })) => shared.panics.lock().push(format!("{what}: {failure}")),
                Ok(_) => {}
            }
            shared.running.lock().remove(&run);
        }));
    }

    fn check_finished(&self) {
        let mut problems = Vec::new();
        if self.exhaustive {
            let queued = self.shared.received.lock();
            if !queued.is_empty() {
                problems.push(format!(
                    "{} action(s) fed back but never received:\n{}",
                    queued.len(),
                    queued.iter().map(|a| format!("  {a:#?}")).collect::<Vec<_>>().join("\n")
                ));
            }
        }
        let running = self.shared.running.lock();
        if !running.is_empty() {
            problems.push(format!(
                "{} effect run(s) still running ({} waiting on the TestClock): advance the clock, cancel them, or receive their actions:\n{}",
                running.len(),
                self.clock.pending_sleepers(),
                running.values().map(|w| format!("  - {w}")).collect::<Vec<_>>().join("\n")
            ));
        }
        for p in self.shared.panics.lock().iter() {
            problems.push(format!("an effect panicked: {p}"));
        }
        for letter in self.dead_letters.letters().iter().filter(|l| l.what.starts_with("callback of")) {
            problems.push(format!("a {} panicked: {}", letter.what, letter.error));
        }
        // A panicking effect whose run ended with another failure first (a sibling in a
        // `Parallel`) is only known from its dead letter.
        let panics = self.shared.panics.lock();
        for letter in self.dead_letters.letters().iter().filter(|l| l.what.starts_with("run effect") || l.what.starts_with("detached effects")) {
            if !panics.iter().any(|p| p.contains(&letter.error)) {
                problems.push(format!("an effect panicked: {}: {}", letter.what, letter.error));
            }
        }
        drop(panics);
        for letter in self.dead_letters.letters().iter().filter(|l| l.what == "deadline") {
            problems.push(format!("a deadline was refused: {}", letter.error));
        }
        assert!(problems.is_empty(), "TestStore ended with unfinished work:\n{}", problems.join("\n"));
    }
}

impl<R: Reducer> Drop for TestStore<R>
where
    R::State: Clone + PartialEq + Debug,
    R::Action: PartialEq + Debug,
{
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if !std::thread::panicking() {
            self.check_finished();
        }
    }
}
