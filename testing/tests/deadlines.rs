//! Deadline rules that `TestStore` and the saga runner must apply alike: a deadline is a decision of
//! the step (a failing effect before it does not skip it), scheduling a name again replaces it, and
//! `TestStore::finish` names a deadline left pending.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use composable_rust_core::{CodecError, Effect, Effects, EventStore, ExpectedVersion, Reducer, Saga, SagaInput, SerializedEvent, StreamId, Version, smallvec};
use composable_rust_runtime::{Executor, RetryPolicy, SagaRunner};
use composable_rust_testing::{InMemoryEventStore, TestClock, TestStore};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Action {
    /// Appends with a version that cannot match (fails), then schedules `late` in 10 s.
    FailThenSchedule,
    /// Schedules `late` in `secs`.
    Schedule(u64),
    Fired(u64),
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct State {
    fired: Vec<u64>,
    failures: u32,
}

struct Timers;

impl Reducer for Timers {
    type State = State;
    type Action = Action;
    type Environment = ();

    fn reduce(&self, state: &mut State, action: Action, (): &()) -> Effects<Action> {
        match action {
            Action::FailThenSchedule => {
                let event = SerializedEvent::new("Nothing.v1", vec![1], None);
                let append = Effect::append(StreamId::new("nowhere-1").unwrap(), ExpectedVersion::Exact(Version(9)), vec![event]).on_error(|_| Action::Failed);
                smallvec![append.into(), Effect::deadline_after("late", Duration::from_secs(10), Action::Fired(10))]
            }
            Action::Schedule(secs) => smallvec![Effect::deadline_after("late", Duration::from_secs(secs), Action::Fired(secs))],
            Action::Fired(secs) => {
                state.fired.push(secs);
                smallvec![]
            }
            Action::Failed => {
                state.failures += 1;
                smallvec![]
            }
        }
    }
}

impl Saga for Timers {
    const NAME: &'static str = "timers";

    fn topics(&self) -> Vec<String> {
        vec!["timers".into()]
    }

    fn initial_state(&self, _: &str) -> State {
        State::default()
    }

    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<Action>>, CodecError> {
        Ok(Some(SagaInput { instance_id: "i-1".into(), action: event.decode_data()? }))
    }
}

fn event(action: &Action) -> SerializedEvent {
    SerializedEvent::from_payload("Timer.v1", action, None).unwrap()
}

#[tokio::test]
async fn test_store_a_deadline_after_a_failed_effect_is_still_scheduled() {
    let mut s = TestStore::new(State::default(), Timers, ());
    s.send(Action::FailThenSchedule, |_| {});
    s.receive(Action::Failed, |st| st.failures = 1).await;
    s.advance(Duration::from_secs(10)).await;
    s.receive(Action::Fired(10), |st| st.fired = vec![10]).await;
    s.finish().await;
}

#[tokio::test]
async fn saga_runner_a_deadline_after_a_failed_effect_is_still_scheduled() {
    let clock = TestClock::new();
    let store = Arc::new(InMemoryEventStore::new());
    let runner = SagaRunner::new(Timers, (), Executor::builder().store(store.clone()).clock(Arc::new(clock.clone())).retry(RetryPolicy::NONE).build());
    runner.handle_event(&event(&Action::FailThenSchedule)).await.unwrap();
    assert_eq!(runner.load_instance("i-1").await.unwrap().failures, 1, "the append failed and fed back its error");
    clock.advance(Duration::from_secs(10)).await;
    assert_eq!(runner.fire_due_deadlines().await.unwrap(), 1);
    assert_eq!(runner.load_instance("i-1").await.unwrap().fired, vec![10]);
}

#[tokio::test]
async fn test_store_scheduling_a_name_again_replaces_it() {
    let mut s = TestStore::new(State::default(), Timers, ());
    s.send(Action::Schedule(5), |_| {});
    s.advance(Duration::from_secs(2)).await;
    s.send(Action::Schedule(10), |_| {});
    s.advance(Duration::from_secs(5)).await;
    s.advance(Duration::from_secs(5)).await;
    s.receive(Action::Fired(10), |st| st.fired = vec![10]).await;
    s.finish().await;
}

#[tokio::test]
async fn saga_runner_scheduling_a_name_again_replaces_it() {
    let clock = TestClock::new();
    let store = Arc::new(InMemoryEventStore::new());
    let runner = SagaRunner::new(Timers, (), Executor::builder().store(store.clone()).clock(Arc::new(clock.clone())).retry(RetryPolicy::NONE).build());
    runner.handle_event(&event(&Action::Schedule(5))).await.unwrap();
    clock.advance(Duration::from_secs(2)).await;
    runner.handle_event(&event(&Action::Schedule(10))).await.unwrap();
    clock.advance(Duration::from_secs(5)).await;
    assert_eq!(runner.fire_due_deadlines().await.unwrap(), 0, "the 5 s deadline was replaced");
    clock.advance(Duration::from_secs(5)).await;
    assert_eq!(runner.fire_due_deadlines().await.unwrap(), 1);
    assert_eq!(runner.load_instance("i-1").await.unwrap().fired, vec![10]);
    assert!(store.deadlines(&SagaRunner::<Timers>::consumer(), None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn finish_names_a_deadline_left_pending() {
    let mut s = TestStore::new(State::default(), Timers, ());
    s.send(Action::Schedule(30), |_| {});
    let finished = AssertUnwindSafe(s.finish()).catch_unwind().await;
    let message = finished.expect_err("a pending deadline is unfinished work");
    let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("deadline late"), "{message}");
}
