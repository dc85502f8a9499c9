//! [`TestStore`]: deterministic, exhaustive tests of a reducer, in the style of Point-Free's
//! Composable Architecture.
//!
//! - [`TestStore::send`] reduces an action and asserts the **whole** state equals the state before,
//!   mutated by your closure; a mismatch fails with a line diff.
//! - Effects run for real on the runtime's executor (so their order and failure semantics are the
//!   production ones), on a [`TestClock`], with the environment you give (typically the in-memory
//!   store and bus). Actions they feed back are queued; [`TestStore::receive`] asserts the next one
//!   and the state change it makes.
//! - Store, bus and dispatch effects are recorded ([`TestStore::effect_log`]).
//! - Dropping the store with unreceived actions or effects still running (say a `Delay` whose time
//!   never came) fails the test, listing them. [`TestStore::non_exhaustive`] relaxes the first rule.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{Effects, Reducer};
use composable_rust_runtime::{EffectObserver, EffectRecord, ExecutionScope, Executor, Feedback, RetryPolicy, Tracker};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::clock::{TestClock, settle};
use crate::diff::debug_diff;

#[derive(Default)]
struct Recorder {
    records: Mutex<Vec<EffectRecord>>,
}

impl EffectObserver for Recorder {
    fn observe(&self, record: EffectRecord) {
        self.records.lock().push(record);
    }
}

struct Received<A> {
    queue: Mutex<VecDeque<A>>,
    arrived: Notify,
}

/// A store for tests. See the module docs.
pub struct TestStore<R: Reducer>
where
    R::State: Clone + PartialEq + Debug,
    R::Action: PartialEq + Debug,
{
    reducer: Arc<R>,
    env: Arc<R::Environment>,
    state: R::State,
    received: Arc<Received<R::Action>>,
    in_flight: Tracker,
    executor: Executor,
    clock: TestClock,
    recorder: Arc<Recorder>,
    exhaustive: bool,
    timeout: Duration,
}

impl<R: Reducer> TestStore<R>
where
    R::State: Clone + PartialEq + Debug,
    R::Action: PartialEq + Debug,
{
    /// A test store with a fresh [`TestClock`] and no retries (failures show up at once).
    pub fn new(initial_state: R::State, reducer: R, env: R::Environment) -> Self {
        Self::with_clock(initial_state, reducer, env, TestClock::new())
    }

    /// A test store on a given clock (share it with the environment if the reducer reads time).
    pub fn with_clock(initial_state: R::State, reducer: R, env: R::Environment, clock: TestClock) -> Self {
        let recorder = Arc::new(Recorder::default());
        let executor =
            Executor::builder().clock(Arc::new(clock.clone())).retry(RetryPolicy::NONE).observer(Arc::clone(&recorder) as Arc<dyn EffectObserver>).build();
        Self {
            reducer: Arc::new(reducer),
            env: Arc::new(env),
            state: initial_state,
            received: Arc::new(Received { queue: Mutex::new(VecDeque::new()), arrived: Notify::new() }),
            in_flight: Tracker::new(),
            executor,
            clock,
            recorder,
            exhaustive: true,
            timeout: Duration::from_secs(2),
        }
    }

    /// Allows ending the test with actions not received and sending while some are queued.
    #[must_use]
    pub fn non_exhaustive(mut self) -> Self {
        self.exhaustive = false;
        self
    }

    /// How long (real time) `receive` waits for an effect to feed an action back (default 2 s).
    #[must_use]
    pub fn with_receive_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The clock driving `Delay` and backoff.
    pub fn clock(&self) -> &TestClock {
        &self.clock
    }

    /// The current state.
    pub fn state(&self) -> &R::State {
        &self.state
    }

    /// The environment.
    pub fn environment(&self) -> &R::Environment {
        &self.env
    }

    /// Store, bus and dispatch effects executed (or skipped) so far, in order.
    pub fn effect_log(&self) -> Vec<EffectRecord> {
        self.recorder.records.lock().clone()
    }

    /// `(topic, event_type)` of every successful publish so far.
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
    /// `expected`. Its effects start running.
    #[track_caller]
    pub fn send(&mut self, action: R::Action, expected: impl FnOnce(&mut R::State)) -> &mut Self {
        if self.exhaustive {
            let queued = self.received.queue.lock();
            assert!(
                queued.is_empty(),
                "send({action:?}) while {} fed-back action(s) were not received yet: {:?}\nreceive them first (or use non_exhaustive())",
                queued.len(),
                *queued
            );
        }
        let description = format!("send({action:?})");
        self.reduce_and_assert(action, expected, &description);
        self
    }

    /// Waits for the next action fed back by an effect, asserts it equals `action`, reduces it and
    /// asserts the state like [`TestStore::send`].
    pub async fn receive(&mut self, action: R::Action, expected: impl FnOnce(&mut R::State)) -> &mut Self {
        let got = self.next_received().await;
        match got {
            None => panic!(
                "receive({action:?}): no action arrived within {:?}; effects in flight: {}, clock sleepers: {} (advance the TestClock if an effect waits on it)",
                self.timeout,
                self.in_flight.in_flight(),
                self.clock.pending_sleepers()
            ),
            Some(got) if got != action => panic!("receive: the next action fed back differs from the expected one\n{}", debug_diff(&action, &got)),
            Some(got) => {
                let description = format!("receive({got:?})");
                self.reduce_and_assert(got, expected, &description);
            }
        }
        self
    }

    /// Moves the [`TestClock`] forward, running delayed effects that come due.
    pub async fn advance(&mut self, by: Duration) {
        self.clock.advance(by).await;
    }

    /// Waits until running effects finish or block on the clock.
    pub async fn settle(&self) {
        settle().await;
    }

    /// Asserts nothing is pending: every fed-back action received and no effect running.
    pub async fn finish(mut self) {
        settle().await;
        let _ = tokio::time::timeout(Duration::from_millis(50), self.in_flight.idle()).await;
        self.check_finished();
        self.exhaustive = false;
        self.in_flight = Tracker::new();
    }

    async fn next_received(&self) -> Option<R::Action> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let arrived = self.received.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(a) = self.received.queue.lock().pop_front() {
                return Some(a);
            }
            if self.in_flight.in_flight() == 0 {
                return None;
            }
            tokio::select! {
                () = arrived => {}
                () = self.in_flight.idle() => {}
                () = tokio::time::sleep_until(deadline) => return self.received.queue.lock().pop_front(),
            }
        }
    }

    #[track_caller]
    fn reduce_and_assert(&mut self, action: R::Action, expected: impl FnOnce(&mut R::State), description: &str) {
        let mut expected_state = self.state.clone();
        expected(&mut expected_state);
        let effects = self.reducer.reduce(&mut self.state, action, &self.env);
        assert!(expected_state == self.state, "{description}: state differs from the expected state\n{}", debug_diff(&expected_state, &self.state));
        self.spawn(effects);
    }

    fn spawn(&self, effects: Effects<R::Action>) {
        if effects.is_empty() {
            return;
        }
        let guard = self.in_flight.enter();
        let received = Arc::clone(&self.received);
        let executor = self.executor.clone();
        tokio::spawn(async move {
            let feedback: Feedback<R::Action> = Arc::new(move |a| {
                received.queue.lock().push_back(a);
                received.arrived.notify_one();
            });
            let scope = ExecutionScope::default();
            let _ = executor.run(effects.into_vec(), &feedback, &scope).await;
            drop(guard);
        });
    }

    fn check_finished(&self) {
        let mut problems = Vec::new();
        if self.exhaustive {
            let queued = self.received.queue.lock();
            if !queued.is_empty() {
                problems.push(format!(
                    "{} action(s) fed back but never received:\n{}",
                    queued.len(),
                    queued.iter().map(|a| format!("  {a:#?}")).collect::<Vec<_>>().join("\n")
                ));
            }
        }
        let running = self.in_flight.in_flight();
        if running > 0 {
            problems.push(format!(
                "{running} effect(s) still running ({} waiting on the TestClock): advance the clock, cancel them, or receive their actions",
                self.clock.pending_sleepers()
            ));
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
        if !std::thread::panicking() {
            self.check_finished();
        }
    }
}
